//! `moshid bench mimi --batch B`: B independent streams of one loaded Mimi stepped together,
//! as the conversation hub steps its conversations: per step one batched encode of a frame
//! per stream, then one batched decode of each stream's codes. One JSON line with the whole
//! step's time (`step_ms_median`), to compare B = 1, 2, 4, 8.

use std::collections::BTreeMap;
use std::time::Instant;

use serde::Serialize;

use moshid_models::mimi::{Kind, Mimi, Part};

use super::bench::{mean, median, round3};
use super::procstat::{cpu_ms, load_average};

/// What to run.
pub(super) struct Run {
    pub batch: usize,
    /// Each stream stepped alone (what a server with a codec state per connection does).
    pub independent: bool,
    pub frames: usize,
    pub warmup: usize,
    pub device: String,
    pub dtype: String,
}

/// The line `bench mimi --batch` prints.
#[derive(Serialize)]
struct Report {
    bench: &'static str,
    batch: usize,
    /// The streams were stepped one after the other, not batched.
    independent: bool,
    device: String,
    dtype: String,
    kernels: &'static str,
    mimi_dtype: &'static str,
    weight_bytes: Option<usize>,
    /// What each stream adds to the loaded model.
    stream_state_bytes: usize,
    frames: usize,
    warmup_frames: usize,
    /// Encode + decode of one frame for every stream.
    step_ms_median: f64,
    step_ms_mean: f64,
    /// The step's median over the batch.
    per_stream_ms: f64,
    /// Process CPU time (all threads) per step.
    cpu_ms_per_step: f64,
    /// Step time over the 80 ms a frame lasts.
    rtf: f64,
    /// The step's time per part and per kind of layer (CPU engine; empty on candle; with
    /// `independent`, the first stream's only).
    parts_ms_mean: BTreeMap<&'static str, f64>,
    kinds_ms_mean: BTreeMap<&'static str, f64>,
    loadavg_1m: [Option<f64>; 2],
}

/// Runs `r.warmup` untimed then `r.frames` timed steps of `r.batch` streams of `model`, each
/// reading `source` (looped) from its own offset, and prints the report.
pub(super) fn run(model: &Mimi, source: &[f32], r: &Run) -> anyhow::Result<()> {
    let fs = model.frame_samples();
    let k = model.num_codebooks();
    let b = r.batch;
    let mut streams: Vec<Mimi> = (0..b).map(|_| model.new_stream()).collect();
    let mut codes = vec![vec![0u32; k]; b];
    let mut out = vec![vec![0f32; fs]; b];
    let mut frames = vec![vec![0f32; fs]; b];
    let load_before = load_average();
    let (mut wall, mut cpu) = (Vec::with_capacity(r.frames), 0.0);
    let mut split = Split::default();
    for step in 0..r.warmup + r.frames {
        for (s, f) in frames.iter_mut().enumerate() {
            // Streams 0.37 s apart in the signal, so each one codes different audio.
            let start = (step * fs + s * 8_887) % source.len();
            for (i, v) in f.iter_mut().enumerate() {
                *v = source[(start + i) % source.len()];
            }
        }
        streams[0].reset_profile();
        let (t, c) = (Instant::now(), cpu_ms());
        if r.independent {
            for (((m, f), c), o) in streams
                .iter_mut()
                .zip(&frames)
                .zip(&mut codes)
                .zip(&mut out)
            {
                m.encode_step(f, c)?;
                m.decode_step(c, o)?;
            }
        } else {
            step_together(&mut streams, &frames, &mut codes, &mut out)?;
        }
        if step >= r.warmup {
            wall.push(t.elapsed().as_secs_f64() * 1e3);
            cpu += cpu_ms() - c;
            split.add(&streams[0]);
        }
    }
    let step_mean = mean(&wall);
    let step = median(&mut wall);
    let frame_ms = fs as f64 * 1e3 / moshid_models::mimi::SAMPLE_RATE as f64;
    let line = Report {
        bench: "mimi",
        batch: b,
        independent: r.independent,
        device: r.device.clone(),
        dtype: r.dtype.clone(),
        kernels: model.kernels(),
        mimi_dtype: model.weight_dtype().name(),
        weight_bytes: model.weight_bytes(),
        stream_state_bytes: model.stream_state_bytes(),
        frames: r.frames,
        warmup_frames: r.warmup,
        step_ms_median: round3(step),
        step_ms_mean: round3(step_mean),
        per_stream_ms: round3(step / b as f64),
        cpu_ms_per_step: round3(cpu / r.frames.max(1) as f64),
        rtf: round3(step / frame_ms),
        parts_ms_mean: split.parts(r.frames),
        kinds_ms_mean: split.kinds(r.frames),
        loadavg_1m: [load_before, load_average()],
    };
    println!("{}", serde_json::to_string(&line)?);
    Ok(())
}

/// One batched encode of every stream's frame, then one batched decode of its codes.
fn step_together(
    streams: &mut [Mimi],
    frames: &[Vec<f32>],
    codes: &mut [Vec<u32>],
    out: &mut [Vec<f32>],
) -> anyhow::Result<()> {
    let mut refs: Vec<&mut Mimi> = streams.iter_mut().collect();
    let inputs: Vec<&[f32]> = frames.iter().map(|f| &f[..]).collect();
    let mut code_outs: Vec<&mut [u32]> = codes.iter_mut().map(|c| &mut c[..]).collect();
    Mimi::encode_step_batch(&mut refs, &inputs, &mut code_outs)?;
    let code_ins: Vec<&[u32]> = codes.iter().map(|c| &c[..]).collect();
    let mut pcm_outs: Vec<&mut [f32]> = out.iter_mut().map(|p| &mut p[..]).collect();
    Mimi::decode_step_batch(&mut refs, &code_ins, &mut pcm_outs)?;
    Ok(())
}

/// Sums of the first stream's profile, which a batched step fills for the whole batch.
#[derive(Default)]
struct Split {
    parts: [f64; Part::ALL.len()],
    kinds: [f64; Kind::ALL.len()],
}

impl Split {
    fn add(&mut self, m: &Mimi) {
        let Some(p) = m.profile() else {
            return;
        };
        for (v, part) in self.parts.iter_mut().zip(Part::ALL) {
            *v += p.part(part).as_secs_f64() * 1e3;
        }
        for (v, kind) in self.kinds.iter_mut().zip(Kind::ALL) {
            *v += p.kind(kind).as_secs_f64() * 1e3;
        }
    }

    fn parts(&self, n: usize) -> BTreeMap<&'static str, f64> {
        let n = n.max(1) as f64;
        Part::ALL
            .iter()
            .zip(self.parts)
            .map(|(p, v)| (p.name(), round3(v / n)))
            .collect()
    }

    fn kinds(&self, n: usize) -> BTreeMap<&'static str, f64> {
        let n = n.max(1) as f64;
        Kind::ALL
            .iter()
            .zip(self.kinds)
            .map(|(k, v)| (k.name(), round3(v / n)))
            .collect()
    }
}
