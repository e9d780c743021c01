//! The Moshi language model: temporal + depth transformers, streaming generation,
//! checkpoint loading (PyTorch and candle layouts, safetensors and GGUF) and quantization.

mod attend;
mod batch;
mod config;
pub(crate) mod cpu;
mod gen;
mod gguf;
pub(crate) mod gguf_read;
mod loudness;
mod model;
mod persona;
mod qgemv;
mod random;
mod weights;

use std::path::PathBuf;

pub use batch::{LmBatch, SlotId};
pub use config::{DepformerPosEmb, Gating, LmConfig, Norm, PositionalEmbedding};
pub use gen::{
    ForcedFrame, LmGen, Sampling, StepOut, StepTiming, AUDIO_CODEBOOKS, MAX_TEMPERATURE, MAX_TOP_K,
};
pub use gguf::{quantize_file, QuantReport, QuantType};
pub use loudness::{integrated_loudness, normalize_loudness, VOICE_PROMPT_LUFS};
pub use model::{default_dtype, estimate_memory, LmModel, MemoryEstimate, CUDA_RUNTIME_BYTES};
pub use persona::{
    wrap_role, PersonaPrompt, PromptedState, VoicePreset, VoicePrompt, PROMPT_TEXT_PAD,
    SILENCE_FRAMES, SILENCE_TOKENS, SINE_TOKENS,
};
pub use random::{
    checkpoint_tensors, write_random_checkpoint, write_random_gguf, write_random_safetensors,
};
pub use weights::Layout;

/// Errors from the LM.
#[derive(Debug, thiserror::Error)]
pub enum LmError {
    /// A file could not be read or written.
    #[error("{path}: {error}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error (in the message, not a `source`, so that it is printed once).
        error: std::io::Error,
    },
    /// The file is not a usable checkpoint.
    #[error("{path}: {what}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// A tensor the configuration needs is absent.
    #[error("{path}: tensor `{name}` is missing: the checkpoint does not match the LM configuration (check --lm-config) or is truncated")]
    MissingTensor {
        /// Tensor name.
        name: String,
        /// The file.
        path: PathBuf,
    },
    /// The file holds a tensor the configuration does not use.
    #[error("{path}: unexpected tensor `{name}`: the checkpoint does not match the LM configuration (check --lm-config)")]
    UnexpectedTensor {
        /// Tensor name.
        name: String,
        /// The file.
        path: PathBuf,
    },
    /// A tensor has the wrong shape for the configuration.
    #[error("{path}: tensor `{name}` has shape {got:?}, the LM configuration expects {expected:?} (check --lm-config)")]
    TensorShape {
        /// Tensor name.
        name: String,
        /// Expected shape.
        expected: Vec<usize>,
        /// Shape in the file.
        got: Vec<usize>,
        /// The file.
        path: PathBuf,
    },
    /// Unsupported or inconsistent configuration.
    #[error("LM configuration: {0}")]
    Config(String),
    /// Bad input to a step.
    #[error("LM input: {0}")]
    Input(String),
    /// The model and cache cannot fit in memory.
    #[error("needs {needed} bytes but only {available} are available: {hint}")]
    WontFit {
        /// Bytes needed.
        needed: u64,
        /// Bytes available.
        available: u64,
        /// What to change.
        hint: String,
    },
    /// A tensor operation failed.
    #[error("LM compute: {0}")]
    Candle(String),
}

/// For `cargo bench -p moshid-models`: the CPU q8_0 kernel over raw GGML blocks `[n, k]`,
/// or `None` where it does not run (no AVX2). Not part of the API.
#[doc(hidden)]
pub fn bench_q8_gemv(
    n: usize,
    k: usize,
    blocks: &[u8],
) -> Option<impl Fn(&candle_core::Tensor) -> candle_core::Result<candle_core::Tensor>> {
    let g = qgemv::QGemv::new(candle_core::quantized::GgmlDType::Q8_0, n, k, blocks)?;
    Some(move |x: &candle_core::Tensor| g.forward(x))
}

/// For `cargo bench -p moshid-models`: the CPU kernel on path `isa` (`"avx512-vnni"` or
/// `"avx2"`) over raw GGML blocks `[n, k]` of `dtype`, or `None` where this CPU lacks that
/// path. Not part of the API.
#[doc(hidden)]
pub fn bench_q_gemm(
    dtype: candle_core::quantized::GgmlDType,
    n: usize,
    k: usize,
    blocks: &[u8],
    isa: &str,
) -> Option<impl Fn(&candle_core::Tensor) -> candle_core::Result<candle_core::Tensor>> {
    let isa = match (qgemv::Isa::detect()?, isa) {
        (qgemv::Isa::Avx512Vnni, "avx512-vnni") => qgemv::Isa::Avx512Vnni,
        (_, "avx2") => qgemv::Isa::Avx2,
        _ => return None,
    };
    let g = qgemv::QGemv::with_isa(isa, dtype, n, k, blocks)?;
    Some(move |x: &candle_core::Tensor| g.forward(x))
}

/// For `cargo bench -p moshid-models`: one query against a full window of `cap` keys and
/// values (`[heads, cap, d]` each) into `out` (`[heads, d]`). Not part of the API.
#[doc(hidden)]
pub fn bench_attend(q: &[f32], k: &[f32], v: &[f32], cap: usize, d: usize, out: &mut [f32]) {
    attend::attend_one(q, k, v, cap, cap, d, 1.0 / (d as f32).sqrt(), out);
}

/// Which of moshid's CPU kernels the q8_0/q4_0 linear layers take on this CPU
/// (`"avx512-vnni"`, `"avx2"`), or `None` where candle's quantized matmul runs them.
pub fn cpu_kernel() -> Option<&'static str> {
    qgemv::Isa::detect().map(|i| match i {
        qgemv::Isa::Avx512Vnni => "avx512-vnni",
        qgemv::Isa::Avx2 => "avx2",
    })
}
