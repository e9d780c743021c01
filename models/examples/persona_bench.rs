//! PersonaPlex figures for the README (issue 23): a persona prompt from scratch vs from its
//! cached state, the memory a cached persona takes, and the 7B step with the depth
//! transformer's 16 steps against Moshi's 8. Random 7B-shaped q8_0 weights (written once,
//! 8-9 GB each, reused when present).
//!
//!   cargo run --release -p moshid-models --example persona_bench -- DIR [CONTEXT]

use std::path::Path;
use std::time::Instant;

use moshid_models::lm::{
    write_random_gguf, LmConfig, LmGen, LmModel, PersonaPrompt, QuantType, Sampling, StepTiming,
    VoicePrompt,
};

const STEPS: usize = 12;

fn model(dir: &Path, cfg: &LmConfig, name: &str) -> Result<LmModel, Box<dyn std::error::Error>> {
    let path = dir.join(name);
    if !path.exists() {
        let t0 = Instant::now();
        write_random_gguf(cfg, 1, &path, QuantType::Q8_0)?;
        eprintln!(
            "wrote {} in {:.0} s",
            path.display(),
            t0.elapsed().as_secs_f64()
        );
    }
    Ok(LmModel::load(&path, cfg, None, &candle_core::Device::Cpu)?)
}

/// Median temporal and depth milliseconds over `STEPS` steps after 2 warm-up steps.
fn step_ms(g: &mut LmGen) -> Result<(f64, f64), Box<dyn std::error::Error>> {
    let mut t: Vec<StepTiming> = Vec::new();
    for i in 0..STEPS + 2 {
        g.step(&[i as u32, 1, 2, 3, 4, 5, 6, 7])?;
        t.push(g.last_timing());
    }
    let med = |f: &dyn Fn(&StepTiming) -> f64| {
        let mut v: Vec<f64> = t[2..].iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    Ok((
        med(&|s| s.temporal.as_secs_f64() * 1e3),
        med(&|s| s.depth.as_secs_f64() * 1e3),
    ))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let dir = Path::new(
        args.get(1)
            .map(String::as_str)
            .unwrap_or("target/persona-bench"),
    );
    let context: usize = args.get(2).map(|c| c.parse()).transpose()?.unwrap_or(500);
    std::fs::create_dir_all(dir)?;
    let sampling = Sampling::default();
    let pp = model(dir, &LmConfig::personaplex_v1(), "personaplex-7b-q8_0.gguf")?;
    let mut g = LmGen::new(pp, sampling, context)?;
    // NVIDIA's typical prompt: 5 s of voice (63 frames), a 32-token role.
    let prompt = PersonaPrompt {
        voice: Some(VoicePrompt::Codes(vec![[1, 2, 3, 4, 5, 6, 7, 8]; 63])),
        role_tokens: (100..132).collect(),
    };
    let state = g.run_prompt(&prompt, |_| {})?;
    let t0 = Instant::now();
    g.restore_prompted(&state)?;
    let restore = t0.elapsed();
    println!(
        "prompt from scratch: {} steps in {:.1} s; from the cache: {:.1} ms; cached persona: {:.1} MB of KV entries",
        state.steps(),
        state.elapsed().as_secs_f64(),
        restore.as_secs_f64() * 1e3,
        state.bytes() as f64 / 1e6
    );
    let (tp, dp) = step_ms(&mut g)?;
    drop(g);
    let moshi = model(dir, &LmConfig::v0_1(), "moshi-7b-q8_0.gguf")?;
    let (tm, dm) = step_ms(&mut LmGen::new(moshi, sampling, context)?)?;
    println!(
        "7B q8_0 step (median of {STEPS}): PersonaPlex (dep_q 16) temporal {tp:.0} ms + depth {dp:.0} ms = {:.0} ms; Moshi (dep_q 8) temporal {tm:.0} ms + depth {dm:.0} ms = {:.0} ms",
        tp + dp,
        tm + dm
    );
    Ok(())
}
