//! `moshid bench ...`: speed figures as one JSON line.

use std::path::PathBuf;
use std::time::Instant;

use clap::{Args, Subcommand};

use super::codec::MimiArgs;

/// Benchmarks.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Streaming Mimi encode + decode, per 80 ms frame.
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
    /// Timed frames (80 ms each), after 3 warm-up frames.
    #[arg(long, default_value_t = 50, value_parser = super::count)]
    frames: usize,
    /// Codebooks per frame.
    #[arg(long, default_value_t = 8)]
    num_codebooks: usize,
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
    const WARMUP: usize = 3;
    let total = a.frames + WARMUP;
    let source = match &a.wav {
        Some(p) => moshid_hal::wav::read_mono_24k(p)?,
        None => synthetic(total * fs),
    };
    if source.is_empty() {
        anyhow::bail!("the WAV file has no samples");
    }
    let pcm: Vec<f32> = source.iter().copied().cycle().take(total * fs).collect();

    let k = mimi.num_codebooks();
    let mut codes = vec![vec![0u32; k]; total];
    let mut enc_ms = Vec::with_capacity(a.frames);
    for (i, (frame, c)) in pcm.chunks(fs).zip(codes.iter_mut()).enumerate() {
        let t = Instant::now();
        mimi.encode_step(frame, c)?;
        if i >= WARMUP {
            enc_ms.push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    let mut out = vec![0f32; fs];
    let mut dec_ms = Vec::with_capacity(a.frames);
    for (i, c) in codes.iter().enumerate() {
        let t = Instant::now();
        mimi.decode_step(c, &mut out)?;
        if i >= WARMUP {
            dec_ms.push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    let frame_ms = fs as f64 * 1e3 / moshid_models::mimi::SAMPLE_RATE as f64;
    let (em, dm) = (median(&mut enc_ms), median(&mut dec_ms));
    let line = serde_json::json!({
        "bench": "mimi",
        "device": a.mimi.device.to_string(),
        "dtype": a.mimi.dtype.to_string(),
        "frames": a.frames,
        "num_codebooks": k,
        "encode_ms_median": round3(em),
        "decode_ms_median": round3(dm),
        "encode_ms_mean": round3(mean(&enc_ms)),
        "decode_ms_mean": round3(mean(&dec_ms)),
        "rtf": round3((em + dm) / frame_ms),
    });
    println!("{line}");
    Ok(())
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

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}
