//! `moshid bench ...`: speed figures as one JSON line.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use clap::{Args, Subcommand};
use serde::Serialize;

use moshid_models::mimi::{Kind, Mimi, Part};

use super::codec::MimiArgs;
use super::procstat::{cpu_ms, huge_page_bytes, load_average};

const PARTS: usize = Part::ALL.len();
const KINDS: usize = Kind::ALL.len();

/// Benchmarks.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Streaming Mimi encode + decode, per 80 ms frame, with the split per part and per kind
    /// of layer.
    Mimi(MimiBenchArgs),
    /// Moshi LM step time (temporal/depth split) and peak memory.
    Lm(super::bench_lm::Args),
    /// The web endpoint's cost per 80 ms frame (Ogg + Opus both ways, model aside).
    Web(super::bench_web::Args),
}

/// Arguments of `moshid bench mimi`.
#[derive(Args, Debug)]
pub struct MimiBenchArgs {
    #[command(flatten)]
    mimi: MimiArgs,
    /// Audio to stream (any WAV; looped if shorter). Default: a synthetic voice-like signal.
    #[arg(long, value_name = "IN.wav")]
    wav: Option<PathBuf>,
    /// Timed frames (80 ms each), after the warm-up.
    #[arg(long, default_value_t = 50, value_parser = super::count)]
    frames: usize,
    /// Untimed frames first. Default: until the attention windows are full (125 frames for the
    /// released Mimi), so the figures are those of a long conversation, not of its first
    /// seconds, when attention reads fewer past steps.
    #[arg(long, value_name = "FRAMES", value_parser = super::count_or_zero)]
    warmup: Option<usize>,
    /// Codebooks per frame.
    #[arg(long, default_value_t = 8, value_parser = super::codebooks)]
    num_codebooks: usize,
    /// Step B independent streams of the one model together (batched encode + decode of one
    /// frame each per step) and report the whole step (`batch`, `step_ms_median`) instead.
    #[arg(long, value_name = "B", value_parser = super::count)]
    batch: Option<usize>,
    /// With --batch: step the B streams one after the other (B single-stream encodes and
    /// decodes per step, each reading all the weights) instead of together, for comparison.
    #[arg(long, requires = "batch")]
    independent: bool,
}

/// Runs a benchmark.
pub fn run(cmd: Command) -> anyhow::Result<()> {
    match cmd {
        Command::Mimi(a) => bench_mimi(a),
        Command::Lm(a) => super::bench_lm::run(a),
        Command::Web(a) => super::bench_web::run(a),
    }
}

fn bench_mimi(a: MimiBenchArgs) -> anyhow::Result<()> {
    if a.frames == 0 {
        anyhow::bail!("--frames must be at least 1");
    }
    let mut mimi = a.mimi.load(a.num_codebooks)?;
    let fs = mimi.frame_samples();
    let warmup = a.warmup.unwrap_or_else(|| mimi.context_frames());
    let total = a.frames + warmup;
    let source = match &a.wav {
        Some(p) => moshid_hal::wav::read_mono_24k(p)?,
        None => synthetic(total * fs),
    };
    if source.is_empty() {
        anyhow::bail!("the WAV file has no samples");
    }
    if let Some(b) = a.batch {
        let run = super::bench_mimi_batch::Run {
            batch: b,
            independent: a.independent,
            frames: a.frames,
            warmup,
            device: a.mimi.device.to_string(),
            dtype: a.mimi.dtype.to_string(),
        };
        return super::bench_mimi_batch::run(&mimi, &source, &run);
    }
    let pcm: Vec<f32> = source.iter().copied().cycle().take(total * fs).collect();
    let load_before = load_average();

    let k = mimi.num_codebooks();
    let mut codes = vec![vec![0u32; k]; total];
    let mut enc = Timings::default();
    for (i, (frame, c)) in pcm.chunks(fs).zip(codes.iter_mut()).enumerate() {
        enc.frame(&mut mimi, i >= warmup, |m| m.encode_step(frame, c))?;
    }
    let mut out = vec![0f32; fs];
    let mut dec = Timings::default();
    for (i, c) in codes.iter().enumerate() {
        dec.frame(&mut mimi, i >= warmup, |m| m.decode_step(c, &mut out))?;
    }
    let frame_ms = fs as f64 * 1e3 / moshid_models::mimi::SAMPLE_RATE as f64;
    let (em, dm) = (median(&mut enc.wall), median(&mut dec.wall));
    let mut parts = BTreeMap::new();
    for (i, p) in Part::ALL.iter().enumerate() {
        let v = median(&mut enc.parts[i].clone()) + median(&mut dec.parts[i].clone());
        parts.insert(p.name(), round3(v));
    }
    // The candle engine times parts only: no split by kind (null).
    let mut kinds = BTreeMap::new();
    for (i, kd) in Kind::ALL.iter().enumerate() {
        let (e, d) = (&enc.kinds[i], &dec.kinds[i]);
        kinds.insert(
            kd.name(),
            (!e.is_empty()).then(|| round3(mean(e) + mean(d))),
        );
    }
    let line = MimiReport {
        bench: "mimi",
        device: a.mimi.device.to_string(),
        dtype: a.mimi.dtype.to_string(),
        kernels: mimi.kernels(),
        mimi_dtype: mimi.weight_dtype().name(),
        weight_bytes: mimi.weight_bytes(),
        huge_page_mb: huge_page_bytes().map(|b| round3(b as f64 / 1e6)),
        frames: a.frames,
        warmup_frames: warmup,
        num_codebooks: k,
        encode_ms_median: round3(em),
        decode_ms_median: round3(dm),
        encode_ms_mean: round3(mean(&enc.wall)),
        decode_ms_mean: round3(mean(&dec.wall)),
        cpu_ms_per_frame: round3((enc.cpu_ms + dec.cpu_ms) / a.frames as f64),
        rtf: round3((em + dm) / frame_ms),
        parts_ms_median: parts,
        kinds_ms_mean: kinds,
        loadavg_1m: [load_before, load_average()],
    };
    let line = serde_json::to_string(&line)?;
    println!("{line}");
    Ok(())
}

/// The line `bench mimi` prints.
#[derive(Serialize)]
struct MimiReport {
    bench: &'static str,
    device: String,
    dtype: String,
    /// `avx2`, `neon` or `generic` (the CPU engine's kernels), or `candle`.
    kernels: &'static str,
    mimi_dtype: &'static str,
    /// Bytes of weights the CPU engine holds (null for candle).
    weight_bytes: Option<usize>,
    /// The process's memory on transparent huge pages: near `weight_bytes` when the kernel
    /// granted them (the weights stream faster), 0 when THP is off.
    huge_page_mb: Option<f64>,
    frames: usize,
    /// Untimed frames before them.
    warmup_frames: usize,
    num_codebooks: usize,
    encode_ms_median: f64,
    decode_ms_median: f64,
    encode_ms_mean: f64,
    decode_ms_mean: f64,
    cpu_ms_per_frame: f64,
    rtf: f64,
    parts_ms_median: BTreeMap<&'static str, f64>,
    kinds_ms_mean: BTreeMap<&'static str, Option<f64>>,
    loadavg_1m: [Option<f64>; 2],
}

/// Per-frame wall times, the profile's split of each frame, and process CPU time.
#[derive(Default)]
struct Timings {
    wall: Vec<f64>,
    parts: [Vec<f64>; PARTS],
    kinds: [Vec<f64>; KINDS],
    cpu_ms: f64,
}

impl Timings {
    /// Runs one frame; records it when `timed`.
    fn frame(
        &mut self,
        mimi: &mut Mimi,
        timed: bool,
        f: impl FnOnce(&mut Mimi) -> Result<(), moshid_models::mimi::MimiError>,
    ) -> anyhow::Result<()> {
        mimi.reset_profile();
        let (t, c) = (Instant::now(), cpu_ms());
        f(mimi)?;
        if !timed {
            return Ok(());
        }
        self.wall.push(t.elapsed().as_secs_f64() * 1e3);
        self.cpu_ms += cpu_ms() - c;
        if let Some(p) = mimi.profile() {
            for (v, part) in self.parts.iter_mut().zip(Part::ALL) {
                v.push(p.part(part).as_secs_f64() * 1e3);
            }
            if p.kinds_timed() {
                for (v, kind) in self.kinds.iter_mut().zip(Kind::ALL) {
                    v.push(p.kind(kind).as_secs_f64() * 1e3);
                }
            }
        }
        Ok(())
    }
}

/// A deterministic voice-like test signal: a gliding harmonic tone with a syllable envelope.
fn synthetic(n: usize) -> Vec<f32> {
    let sr = moshid_models::mimi::SAMPLE_RATE as f32;
    let mut phase = 0f32;
    (0..n)
        .map(|i| {
            let t = i as f32 / sr;
            let f0 = 140.0 + 40.0 * (t * 1.3).sin();
            phase += std::f32::consts::TAU * f0 / sr;
            let env = 0.5 + 0.5 * (t * std::f32::consts::TAU * 4.0).sin();
            let v: f32 = (1..6).map(|h| (phase * h as f32).sin() / h as f32).sum();
            0.2 * env * v
        })
        .collect()
}

pub(super) fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

pub(super) fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

pub(super) fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}
