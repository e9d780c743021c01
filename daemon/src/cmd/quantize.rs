//! `moshid quantize`: safetensors LM checkpoint -> GGUF (q8_0, q4_0 or q4k), names kept.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args as ClapArgs;
use moshid_models::lm::{quantize_file, QuantType};

/// Arguments of `moshid quantize`.
#[derive(ClapArgs, Debug)]
pub struct Args {
    /// Input checkpoint (safetensors, f32/bf16/f16, either layout).
    #[arg(long = "in")]
    pub input: PathBuf,
    /// Output GGUF file.
    #[arg(long = "out")]
    pub output: PathBuf,
    /// Quantization: q8_0, q4_0 or q4k.
    #[arg(long = "type", value_parser = ["q8_0", "q4_0", "q4k"])]
    pub ty: String,
}

/// Runs `moshid quantize`.
pub fn run(a: Args) -> anyhow::Result<()> {
    let ty: QuantType = a.ty.parse()?;
    let t0 = std::time::Instant::now();
    let r = quantize_file(&a.input, &a.output, ty)
        .with_context(|| format!("quantizing {} to {}", a.input.display(), a.output.display()))?;
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
