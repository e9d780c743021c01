//! `moshid bench lm`: LM step time, temporal/depth split and peak memory, one JSON line.

use std::path::PathBuf;

use clap::Args as ClapArgs;
use moshid_models::lm::{LmGen, Sampling};

use super::infer::{lm_config, load_lm, parse_dtype};

/// Arguments of `moshid bench lm`.
#[derive(ClapArgs, Debug)]
pub struct Args {
    /// LM checkpoint: safetensors or GGUF.
    #[arg(long)]
    pub lm: PathBuf,
    /// JSON of the reference's lm_kwargs (default: the 7B v0.1 configuration).
    #[arg(long)]
    pub lm_config: Option<PathBuf>,
    /// Timed steps (after 2 warm-up steps).
    #[arg(long, default_value_t = 20)]
    pub steps: usize,
    /// Device: cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Compute dtype (default by device).
    #[arg(long, value_parser = ["f32", "bf16", "f16"])]
    pub dtype: Option<String>,
    /// Attention window in steps (default: the configuration's context).
    #[arg(long)]
    pub context: Option<usize>,
    /// Also measure memory bandwidth (STREAM-like copy and read over 1 GiB, all cores) and
    /// report the step-time floor: weight bytes / copy bandwidth.
    #[arg(long)]
    pub bandwidth: bool,
}

/// Best-of-5 (copy GB/s counting read + write as STREAM does, read-only GB/s), one thread
/// per core over disjoint halves.
fn bandwidth() -> (f64, f64) {
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let per = (512usize << 20) / 8 / threads; // f64 elements per thread, 512 MiB src in all
    let mut src: Vec<Vec<f64>> = (0..threads).map(|t| vec![t as f64 + 0.5; per]).collect();
    let mut dst: Vec<Vec<f64>> = (0..threads).map(|_| vec![0.0; per]).collect();
    let (mut copy, mut read) = (0f64, 0f64);
    for _ in 0..5 {
        let t = std::time::Instant::now();
        std::thread::scope(|sc| {
            for (s, d) in src.iter().zip(dst.iter_mut()) {
                sc.spawn(move || d.copy_from_slice(s));
            }
        });
        copy = copy.max((2 * threads * per * 8) as f64 / t.elapsed().as_secs_f64() / 1e9);
        let t = std::time::Instant::now();
        let sums: Vec<f64> = std::thread::scope(|sc| {
            let hs: Vec<_> = src
                .iter_mut()
                .map(|s| sc.spawn(move || s.chunks(8).map(|c| c.iter().sum::<f64>()).sum::<f64>()))
                .collect();
            hs.into_iter().map(|h| h.join().unwrap_or(0.0)).collect()
        });
        std::hint::black_box(sums);
        read = read.max((threads * per * 8) as f64 / t.elapsed().as_secs_f64() / 1e9);
    }
    std::hint::black_box(&dst);
    (copy, read)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        0.0
    } else {
        v[v.len() / 2]
    }
}

/// CPU time (user + system) this process has used, in ms: on a shared machine the wall time
/// of a step depends on the other load, its CPU time much less.
fn cpu_ms() -> f64 {
    // SAFETY: getrusage only writes into the zeroed struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return 0.0;
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 * 1000.0 + t.tv_usec as f64 / 1000.0;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn peak_rss_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let l = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    Some(l.split_whitespace().nth(1)?.parse::<u64>().ok()? * 1024)
}

/// Runs `moshid bench lm`.
pub fn run(a: Args) -> anyhow::Result<()> {
    if a.steps == 0 {
        anyhow::bail!("--steps must be at least 1");
    }
    let device = moshid_models::device::open(&a.device)?;
    let cfg = lm_config(a.lm_config.as_deref())?;
    let context = a.context.unwrap_or(cfg.context);
    let t0 = std::time::Instant::now();
    let model = load_lm(
        &a.lm,
        &cfg,
        parse_dtype(a.dtype.as_deref())?,
        &device,
        context,
    )?;
    let load_s = t0.elapsed().as_secs_f64();
    let weights = model.weight_bytes();
    let dtype = model.dtype();
    let mut gen = LmGen::new(model, Sampling::default(), context)?;
    // Deterministic pseudo-speech codes: what the user streams does not change the cost.
    let mut x = 12345u32;
    let mut codes = [0u32; 8];
    let (mut total, mut temporal, mut depth) = (vec![], vec![], vec![]);
    let mut cpu0 = 0.0;
    for i in 0..a.steps + 2 {
        if i == 2 {
            cpu0 = cpu_ms();
        }
        for c in codes.iter_mut() {
            x = x.wrapping_mul(1664525).wrapping_add(1013904223);
            *c = (x >> 8) % cfg.card as u32;
        }
        let s = std::time::Instant::now();
        gen.step(&codes)?;
        let el = s.elapsed().as_secs_f64() * 1000.0;
        if i >= 2 {
            let t = gen.last_timing();
            total.push(el);
            temporal.push(t.temporal.as_secs_f64() * 1000.0);
            depth.push(t.depth.as_secs_f64() * 1000.0);
        }
    }
    let cpu_per_step = (cpu_ms() - cpu0) / a.steps as f64;
    let step = median(&mut total);
    let (copy_gbps, read_gbps) = if a.bandwidth { bandwidth() } else { (0.0, 0.0) };
    let mut line = serde_json::json!({
        "bench": "lm",
        "lm": a.lm.display().to_string(),
        "device": a.device,
        "dtype": format!("{dtype:?}").to_lowercase(),
        "steps": a.steps,
        "context": context,
        "step_ms_median": step,
        "step_ms_max": total.iter().cloned().fold(0.0, f64::max),
        "temporal_ms_median": median(&mut temporal),
        "depth_ms_median": median(&mut depth),
        "rtf": step / 80.0,
        "cpu_ms_per_step": cpu_per_step,
        "load_average_1m": load_average(),
        "load_s": load_s,
        "weights_bytes": weights,
        "kv_cache_bytes": gen.cache_bytes(),
        "peak_rss_bytes": peak_rss_bytes(),
        "threads": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
    });
    if a.bandwidth {
        line["stream_copy_gbps"] = copy_gbps.into();
        line["read_gbps"] = read_gbps.into();
        line["floor_ms"] = (weights as f64 / (copy_gbps * 1e9) * 1000.0).into();
        line["step_over_floor"] = (step / (weights as f64 / (copy_gbps * 1e9) * 1000.0)).into();
    }
    println!("{line}");
    Ok(())
}
