//! The Mimi neural audio codec (Kyutai): 24 kHz mono audio <-> 12.5 Hz frames of up to 32
//! codes, causal and streaming.
//!
//! [`Mimi::load`] maps a checkpoint in the released format
//! (`tokenizer-e351c8d8-checkpoint125.safetensors`) and checks every tensor's name and shape.
//! [`Mimi::encode_step`] / [`Mimi::decode_step`] process one 80 ms frame each and keep the
//! streaming state; [`Mimi::encode`] / [`Mimi::decode`] process whole signals with a fresh
//! state and give the same numbers.

mod candle_engine;
mod config;
mod conv;
mod cpu;
mod kernels;
mod load;
mod quantizer;
mod random;
mod seanet;
mod streams;
mod transformer;

use std::path::PathBuf;

use candle_core::{DType, Device};

pub use config::{MimiConfig, QuantizerConfig, SeanetConfig, TransformerConfig};
pub use cpu::profile::{Kind, MimiProfile, Part};
pub use cpu::WeightDtype;
pub use random::write_random_checkpoint;

use candle_engine::CandleMimi;
use cpu::CpuMimi;

/// Audio samples per code frame (80 ms at 24 kHz).
pub const FRAME_SAMPLES: usize = 1920;
/// Mimi's audio sample rate in Hz.
pub const SAMPLE_RATE: u32 = 24_000;

/// Frames processed together by the whole-signal [`Mimi::encode`] / [`Mimi::decode`]; bounds
/// their memory use on long inputs.
const BATCH_FRAMES: usize = 64;

/// Errors from loading or running Mimi.
#[derive(Debug, thiserror::Error)]
pub enum MimiError {
    /// A file could not be read.
    #[error("cannot read {}: {error}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error (kept in the message, not as a `source`, so it is printed once).
        error: std::io::Error,
    },
    /// The checkpoint is not a usable safetensors file.
    #[error("Mimi checkpoint {}: {msg}", path.display())]
    Checkpoint {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        msg: String,
    },
    /// A tensor the configuration needs is absent.
    #[error("Mimi checkpoint {}: tensor `{name}` {expected:?} is missing; is this the Mimi tokenizer file (tokenizer-e351c8d8-checkpoint125.safetensors) matching the config?", path.display())]
    MissingTensor {
        /// The file.
        path: PathBuf,
        /// Tensor name.
        name: String,
        /// Shape the configuration expects.
        expected: Vec<usize>,
    },
    /// A tensor has another shape than the configuration implies.
    #[error("Mimi checkpoint {}: tensor `{name}` has shape {found:?}, expected {expected:?}; the file does not match the Mimi config", path.display())]
    WrongShape {
        /// The file.
        path: PathBuf,
        /// Tensor name.
        name: String,
        /// Shape the configuration expects.
        expected: Vec<usize>,
        /// Shape in the file.
        found: Vec<usize>,
    },
    /// The file holds a tensor Mimi does not use (a different model or config).
    #[error("Mimi checkpoint {}: unexpected tensor `{name}`; the file does not match the Mimi config", path.display())]
    UnexpectedTensor {
        /// The file.
        path: PathBuf,
        /// Tensor name.
        name: String,
    },
    /// Invalid configuration.
    #[error("Mimi config: {0}")]
    Config(String),
    /// Wrong number of codebooks requested.
    #[error("num_codebooks must be between 1 and {max}, got {requested}")]
    NumCodebooks {
        /// Requested.
        requested: usize,
        /// Available in the checkpoint.
        max: usize,
    },
    /// Audio of the wrong length was passed to a streaming call.
    #[error("expected {expected} samples ({} ms at 24 kHz), got {got}", expected / 24)]
    FrameLength {
        /// Samples expected.
        expected: usize,
        /// Samples given.
        got: usize,
    },
    /// Codes with the wrong count or out of range.
    #[error("invalid codes: {0}")]
    Codes(String),
    /// One stream of a batched step was given a wrong input.
    #[error("stream {stream} of the batch: {error}")]
    Stream {
        /// Index of the stream in the batch.
        stream: usize,
        /// What is wrong with its input.
        error: Box<MimiError>,
    },
    /// A tensor operation failed (device or internal error).
    #[error("Mimi computation failed: {0}")]
    Candle(#[from] candle_core::Error),
}

/// Every tensor (name, shape) of a `cfg` checkpoint in the released file's names, in a stable
/// order: the requests the candle build makes, recorded while building it from zeros (the CPU
/// engine reads the file against the same list). For [`MimiConfig::v0_1`] this is the 318
/// tensors of `tokenizer-e351c8d8-checkpoint125.safetensors`.
pub fn expected_tensors(cfg: &MimiConfig) -> Result<Vec<(String, Vec<usize>)>, MimiError> {
    cfg.validate()?;
    let v = load::Vars::made(
        Box::new(|_, shape| vec![0.0; shape.iter().product()]),
        false,
    );
    CandleMimi::build(&v, cfg, cfg.quantizer.n_q)?;
    v.finish()
}

/// Environment variable that, set to `candle`, runs the candle implementation on the CPU too
/// (a diagnostic: it is what moshid ran before the CPU engine, and is much slower).
pub const ENGINE_ENV: &str = "MOSHID_MIMI_ENGINE";

fn force_candle() -> bool {
    std::env::var(ENGINE_ENV).is_ok_and(|v| v.eq_ignore_ascii_case("candle"))
}

/// Which implementation runs.
#[derive(Debug, Clone)]
enum Engine {
    /// The CPU engine (own kernels, buffers reused every frame).
    Cpu(Box<CpuMimi>),
    /// candle tensors, on other devices (CUDA).
    Candle(Box<CandleMimi>),
}

/// Mimi weights plus the encoder's and decoder's streaming state: one stream. The weights
/// are shared, never copied, by the clones and [`Mimi::new_stream`]s of a loaded model, and
/// [`Mimi::encode_step_batch`] / [`Mimi::decode_step_batch`] step several such streams at once.
#[derive(Debug, Clone)]
pub struct Mimi {
    engine: Engine,
    num_codebooks: usize,
    cardinality: usize,
    frame_samples: usize,
    context_frames: usize,
    dtype: WeightDtype,
    /// The candle path's key/value caches per stream (both transformers, at full context).
    candle_kv_bytes: usize,
}

impl Mimi {
    /// Memory-maps `weights` (safetensors, released names), checks that every tensor `cfg`
    /// implies is present with the right shape and finite values, and nothing else is, and
    /// builds Mimi with `num_codebooks` active codebooks (1..=`cfg.quantizer.n_q`), in f32.
    pub fn load(
        weights: &std::path::Path,
        cfg: &MimiConfig,
        num_codebooks: usize,
        device: &Device,
    ) -> Result<Mimi, MimiError> {
        Self::load_typed(
            weights,
            cfg,
            num_codebooks,
            device,
            DType::F32,
            WeightDtype::F32,
        )
    }

    /// [`Mimi::load`] computing in `dtype` (f32, f16 or bf16; the quantizer stays in f32).
    /// Half precision runs candle's generic ops, the path CUDA takes, also on the CPU.
    pub fn load_as(
        weights: &std::path::Path,
        cfg: &MimiConfig,
        num_codebooks: usize,
        device: &Device,
        dtype: DType,
    ) -> Result<Mimi, MimiError> {
        Self::load_typed(weights, cfg, num_codebooks, device, dtype, WeightDtype::F32)
    }

    /// As [`Mimi::load`], with the weights stored as `dtype` (arithmetic stays f32). f16 is
    /// implemented by the CPU engine only.
    pub fn load_with(
        weights: &std::path::Path,
        cfg: &MimiConfig,
        num_codebooks: usize,
        device: &Device,
        dtype: WeightDtype,
    ) -> Result<Mimi, MimiError> {
        Self::load_typed(weights, cfg, num_codebooks, device, DType::F32, dtype)
    }

    /// [`Mimi::load`] with both choices: `compute` (f32 on the CPU runs the CPU engine; f16
    /// and bf16 run candle, as on a GPU) and the CPU engine's weight `storage` (f16 only with
    /// f32 compute on the CPU).
    pub fn load_typed(
        weights: &std::path::Path,
        cfg: &MimiConfig,
        num_codebooks: usize,
        device: &Device,
        compute: DType,
        storage: WeightDtype,
    ) -> Result<Mimi, MimiError> {
        cfg.validate()?;
        if !matches!(compute, DType::F32 | DType::F16 | DType::BF16) {
            return Err(MimiError::Config(format!(
                "dtype {compute:?}: use f32, f16 or bf16"
            )));
        }
        if num_codebooks == 0 || num_codebooks > cfg.quantizer.n_q {
            return Err(MimiError::NumCodebooks {
                requested: num_codebooks,
                max: cfg.quantizer.n_q,
            });
        }
        let cpu_engine = device.is_cpu() && compute == DType::F32 && !force_candle();
        if !cpu_engine && storage != WeightDtype::F32 {
            return Err(MimiError::Config(format!(
                "{} Mimi weight storage is the CPU engine's (f32 compute on the CPU); on {device:?} in {compute:?} use mimi_dtype f32",
                storage.name()
            )));
        }
        let v = load::Vars::open(weights, device)?;
        let engine = if cpu_engine {
            Engine::Cpu(Box::new(CpuMimi::load(&v, cfg, num_codebooks, storage)?))
        } else {
            v.set_dtype(compute);
            Engine::Candle(Box::new(CandleMimi::build(&v, cfg, num_codebooks)?))
        };
        v.finish()?;
        Ok(Mimi {
            engine,
            num_codebooks,
            cardinality: cfg.quantizer.bins,
            frame_samples: cfg.frame_size(),
            context_frames: cfg.transformer.context.div_ceil(cfg.downsample_stride()),
            dtype: storage,
            candle_kv_bytes: 2
                * cfg.transformer.num_layers
                * 2
                * cfg.transformer.context
                * cfg.transformer.d_model
                * compute.size_in_bytes(),
        })
    }

    /// Active codebooks per frame.
    pub fn num_codebooks(&self) -> usize {
        self.num_codebooks
    }

    /// Entries per codebook (codes are `0..cardinality`).
    pub fn cardinality(&self) -> usize {
        self.cardinality
    }

    /// Frames after which the transformers' attention windows are full and a frame costs what
    /// it will cost from then on (125, 10 s, for the released Mimi).
    pub fn context_frames(&self) -> usize {
        self.context_frames
    }

    /// Audio samples per frame (1920 for the released Mimi).
    pub fn frame_samples(&self) -> usize {
        self.frame_samples
    }

    /// How the weights are stored.
    pub fn weight_dtype(&self) -> WeightDtype {
        self.dtype
    }

    /// Compute dtype (the quantizer always runs in f32; the CPU engine in f32).
    pub fn dtype(&self) -> DType {
        match &self.engine {
            Engine::Cpu(_) => DType::F32,
            Engine::Candle(c) => c.dtype(),
        }
    }

    /// The kernels in use: `avx2`, `neon` or `generic` (CPU engine), `candle` (other devices).
    pub fn kernels(&self) -> &'static str {
        match &self.engine {
            Engine::Cpu(c) => c.isa().name(),
            Engine::Candle(_) => "candle",
        }
    }

    /// Bytes of weights held by the CPU engine (`None` on other devices).
    pub fn weight_bytes(&self) -> Option<usize> {
        match &self.engine {
            Engine::Cpu(c) => Some(c.weight_bytes()),
            Engine::Candle(_) => None,
        }
    }

    /// Time per part (and, for the CPU engine, per kind of layer) since the last
    /// [`Mimi::reset_profile`]; `None` on CUDA, whose ops run asynchronously.
    pub fn profile(&self) -> Option<&MimiProfile> {
        match &self.engine {
            Engine::Cpu(c) => Some(c.profile()),
            Engine::Candle(c) => c.profile(),
        }
    }

    /// Zeroes the profile.
    pub fn reset_profile(&mut self) {
        match &mut self.engine {
            Engine::Cpu(c) => c.reset_profile(),
            Engine::Candle(c) => c.reset_profile(),
        }
    }

    /// Forgets all streaming state (encoder and decoder), as for a new conversation.
    pub fn reset(&mut self) {
        self.reset_encoder();
        self.reset_decoder();
    }

    fn reset_encoder(&mut self) {
        match &mut self.engine {
            Engine::Cpu(c) => c.reset_encoder(),
            Engine::Candle(c) => c.enc.reset(),
        }
    }

    fn reset_decoder(&mut self) {
        match &mut self.engine {
            Engine::Cpu(c) => c.reset_decoder(),
            Engine::Candle(c) => c.dec.reset(),
        }
    }

    /// Encodes one frame (`frame_samples()` samples at 24 kHz) into `codes`
    /// (`num_codebooks()` entries), continuing the encoder's stream. On the CPU this does not
    /// allocate once the first frame has sized the buffers.
    pub fn encode_step(&mut self, pcm: &[f32], codes: &mut [u32]) -> Result<(), MimiError> {
        self.check_frame(pcm.len(), 1)?;
        self.check_codes_len(codes.len(), 1)?;
        self.encode_frames(pcm, codes)
    }

    /// Decodes one frame of `num_codebooks()` codes into `pcm` (`frame_samples()` samples),
    /// continuing the decoder's stream.
    pub fn decode_step(&mut self, codes: &[u32], pcm: &mut [f32]) -> Result<(), MimiError> {
        self.check_frame(pcm.len(), 1)?;
        self.check_codes_len(codes.len(), 1)?;
        self.check_code_values(codes.iter().copied(), 0)?;
        self.decode_frames(codes, pcm)
    }

    /// Whole frames of audio -> `[frames, K]` codes, continuing the stream.
    fn encode_frames(&mut self, pcm: &[f32], codes: &mut [u32]) -> Result<(), MimiError> {
        match &mut self.engine {
            Engine::Cpu(c) => c.encode(pcm, codes),
            Engine::Candle(c) => codes.copy_from_slice(&c.encode(pcm)?),
        }
        Ok(())
    }

    /// `[frames, K]` codes -> whole frames of audio, continuing the stream.
    fn decode_frames(&mut self, codes: &[u32], pcm: &mut [f32]) -> Result<(), MimiError> {
        match &mut self.engine {
            Engine::Cpu(c) => c.decode(codes, pcm),
            Engine::Candle(c) => pcm.copy_from_slice(&c.decode(codes, self.num_codebooks)?),
        }
        Ok(())
    }

    /// Encodes a whole signal with a fresh state (the streaming state is untouched); the last
    /// partial frame is zero-padded. Returns one `Vec` of `num_codebooks()` codes per frame,
    /// equal to calling [`Mimi::encode_step`] frame by frame after [`Mimi::reset`].
    pub fn encode(&self, pcm: &[f32]) -> Result<Vec<Vec<u32>>, MimiError> {
        let fs = self.frame_samples;
        let k = self.num_codebooks;
        let n = pcm.len().div_ceil(fs);
        let mut m = self.clone();
        m.reset_encoder();
        let mut out = Vec::with_capacity(n);
        let mut buf = Vec::with_capacity(BATCH_FRAMES * fs);
        let mut codes = vec![0u32; BATCH_FRAMES * k];
        for start in (0..n).step_by(BATCH_FRAMES) {
            let frames = BATCH_FRAMES.min(n - start);
            buf.clear();
            let a = (start * fs).min(pcm.len());
            let b = ((start + frames) * fs).min(pcm.len());
            buf.extend_from_slice(&pcm[a..b]);
            buf.resize(frames * fs, 0.0);
            m.encode_frames(&buf, &mut codes[..frames * k])?;
            out.extend(codes[..frames * k].chunks_exact(k).map(<[u32]>::to_vec));
        }
        Ok(out)
    }

    /// Decodes frames of codes with a fresh decoder state; returns
    /// `codes.len() * frame_samples()` samples, equal to [`Mimi::decode_step`] frame by frame.
    pub fn decode(&self, codes: &[Vec<u32>]) -> Result<Vec<f32>, MimiError> {
        for (i, f) in codes.iter().enumerate() {
            if f.len() != self.num_codebooks {
                return Err(MimiError::Codes(format!(
                    "frame {i} has {} codes, expected {}",
                    f.len(),
                    self.num_codebooks
                )));
            }
            self.check_code_values(f.iter().copied(), i)?;
        }
        let mut m = self.clone();
        m.reset_decoder();
        let fs = self.frame_samples;
        let mut out = vec![0f32; codes.len() * fs];
        for (chunk, pcm) in codes
            .chunks(BATCH_FRAMES)
            .zip(out.chunks_mut(BATCH_FRAMES * fs))
        {
            let flat: Vec<u32> = chunk.iter().flatten().copied().collect();
            m.decode_frames(&flat, pcm)?;
        }
        Ok(out)
    }

    fn check_frame(&self, got: usize, frames: usize) -> Result<(), MimiError> {
        let expected = self.frame_samples * frames;
        if got != expected {
            return Err(MimiError::FrameLength { expected, got });
        }
        Ok(())
    }

    fn check_codes_len(&self, got: usize, frames: usize) -> Result<(), MimiError> {
        if got != self.num_codebooks * frames {
            return Err(MimiError::Codes(format!(
                "got {got} codes for {frames} frame(s), expected {} per frame",
                self.num_codebooks
            )));
        }
        Ok(())
    }

    fn check_code_values(
        &self,
        codes: impl Iterator<Item = u32>,
        frame: usize,
    ) -> Result<(), MimiError> {
        for (k, c) in codes.enumerate() {
            if c as usize >= self.cardinality {
                return Err(MimiError::Codes(format!(
                    "frame {frame}, codebook {k}: code {c} is out of range 0..{}",
                    self.cardinality
                )));
            }
        }
        Ok(())
    }
}
