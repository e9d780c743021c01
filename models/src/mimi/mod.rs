//! The Mimi neural audio codec (Kyutai): 24 kHz mono audio <-> 12.5 Hz frames of up to 32
//! codes, causal and streaming.
//!
//! [`Mimi::load`] maps a checkpoint in the released format
//! (`tokenizer-e351c8d8-checkpoint125.safetensors`) and checks every tensor's name and shape.
//! [`Mimi::encode_step`] / [`Mimi::decode_step`] process one 80 ms frame each and keep the
//! streaming state; [`Mimi::encode`] / [`Mimi::decode`] process whole signals with a fresh
//! state and give the same numbers.

mod config;
mod conv;
mod kernels;
mod load;
mod quantizer;
mod random;
mod seanet;
mod transformer;

use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};

pub use config::{MimiConfig, QuantizerConfig, SeanetConfig, TransformerConfig};
pub use random::write_random_checkpoint;

use conv::{StreamConv1d, StreamConvTr1d};
use quantizer::Quantizer;
use seanet::Seanet;
use transformer::Transformer;

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
    /// A tensor operation failed (device or internal error).
    #[error("Mimi computation failed: {0}")]
    Candle(#[from] candle_core::Error),
}

/// Every tensor (name, shape) of a `cfg` checkpoint in the released file's names, in a stable
/// order: the requests [`Mimi::load`] makes, recorded while building Mimi from zeros. For
/// [`MimiConfig::v0_1`] this is the 318 tensors of
/// `tokenizer-e351c8d8-checkpoint125.safetensors`.
pub fn expected_tensors(cfg: &MimiConfig) -> Result<Vec<(String, Vec<usize>)>, MimiError> {
    cfg.validate()?;
    let v = load::Vars::made(
        Box::new(|_, shape| vec![0.0; shape.iter().product()]),
        false,
    );
    Mimi::build(&v, cfg, cfg.quantizer.n_q)?;
    v.finish()
}

/// Encoder side: SEANet, transformer, learnt downsampling.
#[derive(Debug, Clone)]
struct EncoderPart {
    seanet: Seanet,
    transformer: Transformer,
    downsample: StreamConv1d,
}

/// Decoder side: learnt (depthwise) upsampling, transformer, SEANet.
#[derive(Debug, Clone)]
struct DecoderPart {
    upsample: StreamConvTr1d,
    transformer: Transformer,
    seanet: Seanet,
}

/// Mimi weights plus the encoder's and decoder's streaming state.
#[derive(Debug, Clone)]
pub struct Mimi {
    enc: EncoderPart,
    dec: DecoderPart,
    quantizer: Quantizer,
    num_codebooks: usize,
    cardinality: usize,
    frame_samples: usize,
    device: Device,
    dtype: DType,
}

impl EncoderPart {
    fn reset(&mut self) {
        self.seanet.reset();
        self.transformer.reset();
        self.downsample.reset();
    }

    /// `[1, 1, N * frame]` audio -> `[N, latent]`.
    fn step(&mut self, x: &Tensor) -> candle_core::Result<Tensor> {
        let h = self.seanet.step(x)?; // [1, D, 2N]
        let h = self.transformer.step(&h.squeeze(0)?.t()?.contiguous()?)?; // [2N, D]
        let h = self.downsample.step(&h.t()?.unsqueeze(0)?.contiguous()?)?; // [1, D, N]
        h.squeeze(0)?.t()?.contiguous()
    }
}

impl DecoderPart {
    fn reset(&mut self) {
        self.upsample.reset();
        self.transformer.reset();
        self.seanet.reset();
    }

    /// `[N, latent]` -> `[1, 1, N * frame]` audio.
    fn step(&mut self, z: &Tensor) -> candle_core::Result<Tensor> {
        let h = self.upsample.step(&z.t()?.unsqueeze(0)?.contiguous()?)?; // [1, D, 2N]
        let h = self.transformer.step(&h.squeeze(0)?.t()?.contiguous()?)?; // [2N, D]
        self.seanet.step(&h.t()?.unsqueeze(0)?.contiguous()?)
    }
}

impl Mimi {
    /// Memory-maps `weights` (safetensors, released names), checks that every tensor `cfg`
    /// implies is present with the right shape and finite values, and nothing else is, and
    /// builds Mimi with `num_codebooks` active codebooks (1..=`cfg.quantizer.n_q`).
    pub fn load(
        weights: &std::path::Path,
        cfg: &MimiConfig,
        num_codebooks: usize,
        device: &Device,
    ) -> Result<Mimi, MimiError> {
        Self::load_as(weights, cfg, num_codebooks, device, DType::F32)
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
        cfg.validate()?;
        if !matches!(dtype, DType::F32 | DType::F16 | DType::BF16) {
            return Err(MimiError::Config(format!(
                "dtype {dtype:?}: use f32, f16 or bf16"
            )));
        }
        if num_codebooks == 0 || num_codebooks > cfg.quantizer.n_q {
            return Err(MimiError::NumCodebooks {
                requested: num_codebooks,
                max: cfg.quantizer.n_q,
            });
        }
        let v = load::Vars::open(weights, device)?;
        v.set_dtype(dtype);
        let mimi = Self::build(&v, cfg, num_codebooks)?;
        v.finish()?;
        Ok(mimi)
    }

    /// Builds Mimi from `v`, asking for every tensor of a `cfg` checkpoint (in the order of
    /// the tensor list [`expected_tensors`] reports, which the random writer's values follow).
    fn build(v: &load::Vars, cfg: &MimiConfig, num_codebooks: usize) -> Result<Mimi, MimiError> {
        let g = cfg.downsample_stride();
        let d = cfg.seanet.dimension;
        let enc_seanet = Seanet::encoder(&v.pp("encoder"), &cfg.seanet, cfg.frame_size())?;
        let dec_seanet = Seanet::decoder(&v.pp("decoder"), &cfg.seanet, g)?;
        let enc_tr = Transformer::load(&v.pp("encoder_transformer"), &cfg.transformer, g)?;
        let dec_tr = Transformer::load(&v.pp("decoder_transformer"), &cfg.transformer, g)?;
        let quantizer = Quantizer::load(&v.pp("quantizer"), &cfg.quantizer, d, num_codebooks)?;
        let down = v.get("downsample.conv.conv.conv.weight", &[d, d, 2 * g])?;
        let up = v.get("upsample.convtr.convtr.convtr.weight", &[d, 1, 2 * g])?;
        Ok(Mimi {
            enc: EncoderPart {
                seanet: enc_seanet,
                transformer: enc_tr,
                downsample: StreamConv1d::new(down, None, g, 1, true, 1)?,
            },
            dec: DecoderPart {
                upsample: StreamConvTr1d::new(up, None, g, true, 1)?,
                transformer: dec_tr,
                seanet: dec_seanet,
            },
            quantizer,
            num_codebooks,
            cardinality: cfg.quantizer.bins,
            frame_samples: cfg.frame_size(),
            device: v.device(),
            dtype: v.dtype(),
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

    /// Audio samples per frame (1920 for the released Mimi).
    pub fn frame_samples(&self) -> usize {
        self.frame_samples
    }

    /// Compute dtype (the quantizer always runs in f32).
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Forgets all streaming state (encoder and decoder), as for a new conversation.
    pub fn reset(&mut self) {
        self.enc.reset();
        self.dec.reset();
    }

    /// Encodes one frame (`frame_samples()` samples at 24 kHz) into `codes`
    /// (`num_codebooks()` entries), continuing the encoder's stream.
    pub fn encode_step(&mut self, pcm: &[f32], codes: &mut [u32]) -> Result<(), MimiError> {
        self.check_frame(pcm.len(), 1)?;
        self.check_codes_len(codes.len(), 1)?;
        let x = Tensor::from_slice(pcm, (1, 1, pcm.len()), &self.device)?.to_dtype(self.dtype)?;
        let z = self.enc.step(&x)?;
        let c = self.quantizer.encode(&z)?; // [1, K]
        codes.copy_from_slice(&c.flatten_all()?.to_vec1::<u32>()?);
        Ok(())
    }

    /// Decodes one frame of `num_codebooks()` codes into `pcm` (`frame_samples()` samples),
    /// continuing the decoder's stream.
    pub fn decode_step(&mut self, codes: &[u32], pcm: &mut [f32]) -> Result<(), MimiError> {
        self.check_frame(pcm.len(), 1)?;
        self.check_codes_len(codes.len(), 1)?;
        self.check_code_values(codes.iter().copied(), 0)?;
        let c = Tensor::from_slice(codes, (1, codes.len()), &self.device)?;
        let z = self.quantizer.decode(&c)?.to_dtype(self.dtype)?;
        let y = self.dec.step(&z)?;
        pcm.copy_from_slice(&y.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?);
        Ok(())
    }

    /// Encodes a whole signal with a fresh state (the streaming state is untouched); the last
    /// partial frame is zero-padded. Returns one `Vec` of `num_codebooks()` codes per frame,
    /// equal to calling [`Mimi::encode_step`] frame by frame after [`Mimi::reset`].
    pub fn encode(&self, pcm: &[f32]) -> Result<Vec<Vec<u32>>, MimiError> {
        let fs = self.frame_samples;
        let n = pcm.len().div_ceil(fs);
        let mut enc = self.enc.clone();
        enc.reset();
        let mut out = Vec::with_capacity(n);
        let mut buf = Vec::with_capacity(BATCH_FRAMES * fs);
        for start in (0..n).step_by(BATCH_FRAMES) {
            let frames = BATCH_FRAMES.min(n - start);
            buf.clear();
            let a = (start * fs).min(pcm.len());
            let b = ((start + frames) * fs).min(pcm.len());
            buf.extend_from_slice(&pcm[a..b]);
            buf.resize(frames * fs, 0.0);
            let x =
                Tensor::from_slice(&buf, (1, 1, buf.len()), &self.device)?.to_dtype(self.dtype)?;
            let c = self.quantizer.encode(&enc.step(&x)?)?;
            out.extend(c.to_vec2::<u32>()?);
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
        let mut dec = self.dec.clone();
        dec.reset();
        let mut out = Vec::with_capacity(codes.len() * self.frame_samples);
        for chunk in codes.chunks(BATCH_FRAMES) {
            let flat: Vec<u32> = chunk.iter().flatten().copied().collect();
            let c = Tensor::from_vec(flat, (chunk.len(), self.num_codebooks), &self.device)?;
            let y = dec.step(&self.quantizer.decode(&c)?.to_dtype(self.dtype)?)?;
            out.extend(y.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?);
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
