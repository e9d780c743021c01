//! `moshid codec encode|decode`: WAV <-> Mimi codes (JSON), streamed frame by frame.

use std::path::{Path, PathBuf};

use crate::codes::CodesFile;
use anyhow::{bail, Context};
use candle_core::DType;
use clap::{Args, Subcommand};
use moshid_models::mimi::{Mimi, MimiConfig, SAMPLE_RATE};

/// Codec subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Encode a WAV file (any rate, channels, format) to Mimi codes (JSON).
    Encode(EncodeArgs),
    /// Decode Mimi codes (JSON) to a 24 kHz mono 32-bit float WAV file.
    Decode(DecodeArgs),
    /// Write a deterministic random-weight Mimi checkpoint (full size by default), for
    /// benchmarks where the real file is not at hand. Never a usable codec.
    RandomWeights(RandomArgs),
}

/// `moshid codec random-weights`.
#[derive(Args, Debug)]
pub struct RandomArgs {
    /// Mimi configuration JSON; default: the released Mimi.
    #[arg(long, value_name = "JSON")]
    mimi_config: Option<PathBuf>,
    /// Seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Output safetensors file.
    output: PathBuf,
}

/// Which Mimi to load and where to run it (shared by `codec` and `bench mimi`).
#[derive(Args, Debug, Clone)]
pub struct MimiArgs {
    /// Mimi weights (safetensors, released names), e.g. tokenizer-e351c8d8-checkpoint125.safetensors.
    #[arg(long, value_name = "FILE")]
    pub mimi: PathBuf,
    /// Mimi configuration JSON (the reference's layout); default: the released Mimi.
    #[arg(long, value_name = "JSON")]
    pub mimi_config: Option<PathBuf>,
    /// Device: cpu, cuda or cuda:N.
    #[arg(long, default_value_t = crate::config::DeviceSpec::Cpu)]
    pub device: crate::config::DeviceSpec,
    /// Compute dtype (the quantizer stays f32): f32 (also for `auto`) runs the CPU engine on
    /// the CPU; f16/bf16 run candle's half-precision path, as on a GPU.
    #[arg(long, default_value_t = crate::config::Dtype::F32)]
    pub dtype: crate::config::Dtype,
    /// How the CPU engine stores Mimi's weights: auto or f32 (the reference's numbers), f16
    /// (half the memory traffic; arithmetic stays f32).
    #[arg(long, default_value_t = crate::config::Dtype::Auto)]
    pub mimi_dtype: crate::config::Dtype,
}

impl MimiArgs {
    /// The configuration, from `--mimi-config` or the released one.
    pub fn config(&self) -> anyhow::Result<MimiConfig> {
        match &self.mimi_config {
            Some(p) => Ok(MimiConfig::from_json_file(p)?),
            None => Ok(MimiConfig::v0_1()),
        }
    }

    /// Loads Mimi with `num_codebooks` codebooks.
    pub fn load(&self, num_codebooks: usize) -> anyhow::Result<Mimi> {
        let cfg = self.config()?;
        let device = self.device.open()?;
        let dtype = self.dtype.candle().unwrap_or(DType::F32);
        if dtype == DType::BF16 && !moshid_models::device::DeviceKind::of(&device).has_bf16() {
            bail!("--dtype bf16 needs a GPU of compute capability 8.0 or newer: use f16");
        }
        Ok(Mimi::load_typed(
            &self.mimi,
            &cfg,
            num_codebooks,
            &device,
            dtype,
            self.mimi_dtype.mimi_weights()?,
        )?)
    }
}

/// `moshid codec encode`.
#[derive(Args, Debug)]
pub struct EncodeArgs {
    #[command(flatten)]
    mimi: MimiArgs,
    /// Codebooks per frame (1..=32; Moshi uses 8).
    #[arg(long, default_value_t = 8)]
    num_codebooks: usize,
    /// Input WAV.
    input: PathBuf,
    /// Output JSON: {"num_codebooks": K, "codes": [[c_0, ..., c_K-1], ...]}.
    output: PathBuf,
}

/// `moshid codec decode`.
#[derive(Args, Debug)]
pub struct DecodeArgs {
    #[command(flatten)]
    mimi: MimiArgs,
    /// Input JSON as written by `codec encode`.
    input: PathBuf,
    /// Output WAV (24 kHz mono, 32-bit float).
    output: PathBuf,
}

/// Runs a codec subcommand.
pub fn run(cmd: Command) -> anyhow::Result<()> {
    match cmd {
        Command::Encode(a) => encode(a),
        Command::Decode(a) => decode(a),
        Command::RandomWeights(a) => {
            let cfg = match &a.mimi_config {
                Some(p) => MimiConfig::from_json_file(p)?,
                None => MimiConfig::v0_1(),
            };
            moshid_models::mimi::write_random_checkpoint(&cfg, a.seed, &a.output)
                .with_context(|| format!("writing {}", a.output.display()))
        }
    }
}

fn encode(a: EncodeArgs) -> anyhow::Result<()> {
    let pcm = moshid_hal::wav::read_mono_24k(&a.input)?;
    let mut mimi = a.mimi.load(a.num_codebooks)?;
    let fs = mimi.frame_samples();
    let k = mimi.num_codebooks();
    let mut frame = vec![0f32; fs];
    let mut codes = Vec::with_capacity(pcm.len().div_ceil(fs));
    for chunk in pcm.chunks(fs) {
        // The last partial frame is zero-padded.
        frame[..chunk.len()].copy_from_slice(chunk);
        frame[chunk.len()..].fill(0.0);
        let mut c = vec![0u32; k];
        mimi.encode_step(&frame, &mut c)
            .with_context(|| format!("encoding frame {}", codes.len()))?;
        codes.push(c);
    }
    let out = CodesFile {
        num_codebooks: k,
        codes,
    };
    write_json(&a.output, &out)
}

fn write_json(path: &Path, v: &CodesFile) -> anyhow::Result<()> {
    let text = serde_json::to_string(v)?;
    std::fs::write(path, text + "\n").with_context(|| format!("cannot write {}", path.display()))
}

fn decode(a: DecodeArgs) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&a.input)
        .with_context(|| format!("cannot read {}", a.input.display()))?;
    let cfg = a.mimi.config()?;
    let file = CodesFile::parse(&text, cfg.quantizer.n_q, cfg.quantizer.bins)
        .map_err(|e| anyhow::anyhow!("{}: {e}", a.input.display()))?;
    let k = file.num_codebooks;
    let mut mimi = a.mimi.load(k)?;
    let fs = mimi.frame_samples();
    let mut pcm = vec![0f32; file.codes.len() * fs];
    for (i, (c, out)) in file.codes.iter().zip(pcm.chunks_mut(fs)).enumerate() {
        mimi.decode_step(c, out)
            .with_context(|| format!("decoding frame {i}"))?;
    }
    moshid_hal::wav::write_mono_f32(&a.output, &pcm, SAMPLE_RATE)?;
    Ok(())
}
