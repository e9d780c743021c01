//! `moshid quantize`: safetensors LM checkpoint -> GGUF (q8_0, q4_0 or q4k), names kept.

use std::path::PathBuf;

use anyhow::Context;
use candle_core::DType;
use clap::Args as ClapArgs;
use moshid_models::lm::{
    quantize_file, write_random_gguf, write_random_safetensors, Layout, LmConfig, QuantType,
};

/// Arguments of `moshid quantize`.
#[derive(ClapArgs, Debug)]
pub struct Args {
    /// Input checkpoint (safetensors, f32/bf16/f16, either layout).
    #[arg(long = "in", required_unless_present = "random_seed")]
    pub input: Option<PathBuf>,
    /// Output GGUF file.
    #[arg(long = "out")]
    pub output: PathBuf,
    /// Quantization: q8_0, q4_0 or q4k; with --random-seed also bf16 (a safetensors file in
    /// the candle layout, like the released `model.safetensors`).
    #[arg(long = "type", value_parser = ["q8_0", "q4_0", "q4k", "bf16"])]
    pub ty: String,
    /// Instead of --in: write a deterministic random-weight model of --lm-config (default
    /// the 7B shape) with this seed, tensor by tensor (for benchmarks; never a real voice).
    #[arg(long, conflicts_with = "input")]
    pub random_seed: Option<u64>,
    /// lm_kwargs JSON of the model (default the 7B shape); stored in the GGUF's metadata, so
    /// loading the result needs no side JSON.
    #[arg(long)]
    pub lm_config: Option<PathBuf>,
}

/// `--lm-config` or the 7B default (the input of a quantization is a safetensors file,
/// which carries no configuration).
fn lm_config(path: Option<&std::path::Path>) -> anyhow::Result<LmConfig> {
    Ok(match path {
        Some(p) => LmConfig::from_json_file(p)?,
        None => LmConfig::v0_1(),
    })
}

/// Runs `moshid quantize`.
pub fn run(a: Args) -> anyhow::Result<()> {
    let t0 = std::time::Instant::now();
    if let Some(seed) = a.random_seed {
        let cfg = lm_config(a.lm_config.as_deref())?;
        let written = if a.ty == "bf16" {
            write_random_safetensors(&cfg, seed, &a.output, Layout::Candle, DType::BF16)
        } else {
            write_random_gguf(&cfg, seed, &a.output, a.ty.parse()?)
        };
        written.with_context(|| format!("writing {}", a.output.display()))?;
        let bytes = std::fs::metadata(&a.output)?.len();
        eprintln!(
            "moshid: wrote random-weight {} ({:.2} GB, seed {seed}) in {:.1} s",
            a.output.display(),
            bytes as f64 / 1e9,
            t0.elapsed().as_secs_f64()
        );
        return Ok(());
    }
    if a.ty == "bf16" {
        anyhow::bail!(
            "--type bf16 is for --random-seed only: a safetensors checkpoint already loads as bf16"
        );
    }
    let ty: QuantType = a.ty.parse()?;
    let input = a
        .input
        .as_ref()
        .context("give --in FILE.safetensors (or --random-seed N)")?;
    // Without --lm-config: Moshi 7B, or PersonaPlex 7B when the file has a ninth depth step.
    let cfg = LmConfig::for_checkpoint(a.lm_config.as_deref(), input)?;
    let r = quantize_file(input, &a.output, ty, &cfg)
        .with_context(|| format!("quantizing {} to {}", input.display(), a.output.display()))?;
    eprintln!(
        "moshid: wrote {} ({:.2} GB) in {:.1} s: {} tensors {}, {} in a 32-block fallback (rows not a multiple of the block), {} norms in f32",
        a.output.display(),
        r.bytes as f64 / 1e9,
        t0.elapsed().as_secs_f64(),
        r.quantized,
        a.ty,
        r.fallback,
        r.f32
    );
    Ok(())
}
