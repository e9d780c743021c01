//! Mimi on the CPU without a tensor library: time-major buffers allocated once and reused
//! every frame, weights packed at load for small-batch matrix kernels (AVX2/FMA on x86-64,
//! NEON on aarch64, a generic version elsewhere), f32 or f16 weight storage.
//!
//! A streaming step multiplies only a few rows (1-16 time steps) by large weight matrices:
//! general GEMM libraries repack the weights on every call, which at that size costs as much
//! as the product itself, and a tensor library allocates every intermediate. Here each weight
//! is read once per call, in the layout it was packed in, and no step allocates once the
//! buffers have reached the size of the longest call.

mod arena;
mod attention;
mod checkpoint;
mod conv;
mod gemm;
mod isa;
mod micro;
#[cfg(target_arch = "aarch64")]
mod neon_asm;
mod packed;
mod pool;
pub(crate) mod profile;
mod quantizer;
mod seanet;
pub(crate) mod streams;
#[cfg(test)]
mod tests;
mod transformer;
mod vmath;

pub(crate) use isa::Isa;
pub use packed::WeightDtype;

use super::config::MimiConfig;
use super::load::Vars;
use super::MimiError;
use checkpoint::Checkpoint;
use conv::{Conv, DepthwiseConvTr};
use profile::MimiProfile;
use quantizer::Quantizer;
use seanet::Seanet;
use transformer::Transformer;

/// What the constructors need: the checkpoint and the storage type of the big weights.
pub(crate) struct Load<'a> {
    pub(crate) w: &'a Checkpoint<'a>,
    pub(crate) dtype: WeightDtype,
}

/// One checkpoint tensor as f32 values with its shape.
pub(crate) fn tensor(w: &Checkpoint, name: &str) -> Result<(Vec<f32>, Vec<usize>), MimiError> {
    let t = w.get(name)?;
    let shape = t.dims().to_vec();
    Ok((t.flatten_all()?.to_vec1::<f32>()?, shape))
}

/// Encoder side: SEANet, transformer, learnt downsampling.
#[derive(Debug, Clone)]
struct Encoder {
    seanet: Seanet,
    transformer: Transformer,
    downsample: Conv,
}

/// Decoder side: learnt (depthwise) upsampling, transformer, SEANet.
#[derive(Debug, Clone)]
struct Decoder {
    upsample: DepthwiseConvTr,
    transformer: Transformer,
    seanet: Seanet,
    up: Vec<f32>,
}

/// The whole codec with its streaming state.
#[derive(Debug, Clone)]
pub(crate) struct CpuMimi {
    enc: Encoder,
    dec: Decoder,
    quantizer: Quantizer,
    num_codebooks: usize,
    latent_dim: usize,
    isa: Isa,
    latent: Vec<f32>,
    profile: MimiProfile,
}

impl CpuMimi {
    /// Reads and packs the weights of a `cfg` checkpoint from `v` (every tensor of the file
    /// is then requested or declared: the caller's `v.finish()` checks nothing else is there).
    pub(crate) fn load(
        v: &Vars<'static>,
        cfg: &MimiConfig,
        num_codebooks: usize,
        dtype: WeightDtype,
    ) -> Result<Self, MimiError> {
        let w = &Checkpoint::new(v, cfg)?;
        let mimi = Self::from_checkpoint(w, cfg, num_codebooks, dtype)?;
        w.declare_unread()?;
        Ok(mimi)
    }

    fn from_checkpoint(
        w: &Checkpoint,
        cfg: &MimiConfig,
        num_codebooks: usize,
        dtype: WeightDtype,
    ) -> Result<Self, MimiError> {
        let l = Load { w, dtype };
        let g = cfg.downsample_stride();
        // The parts in the candle build's order, so a mismatched file is reported by the same
        // (first) tensor whichever engine loads it.
        let enc_seanet = Seanet::encoder(&l, &cfg.seanet)?;
        let dec_seanet = Seanet::decoder(&l, &cfg.seanet)?;
        let enc_tr = Transformer::load(&l, "encoder_transformer", &cfg.transformer, g)?;
        let dec_tr = Transformer::load(&l, "decoder_transformer", &cfg.transformer, g)?;
        let quantizer = Quantizer::load(&l, num_codebooks)?;
        let (dw, ds) = tensor(w, "downsample.conv.conv.conv.weight")?;
        let (uw, us) = tensor(w, "upsample.convtr.convtr.convtr.weight")?;
        let enc = Encoder {
            seanet: enc_seanet,
            transformer: enc_tr,
            downsample: Conv::new(&dw, (ds[0], ds[1], ds[2]), None, g, 1, true, dtype),
        };
        let dec = Decoder {
            upsample: DepthwiseConvTr::new(&uw, us[0], g),
            transformer: dec_tr,
            seanet: dec_seanet,
            up: Vec::new(),
        };
        Ok(CpuMimi {
            enc,
            dec,
            quantizer,
            num_codebooks,
            latent_dim: cfg.seanet.dimension,
            isa: Isa::detect(),
            latent: Vec::new(),
            profile: MimiProfile::default(),
        })
    }

    /// The kernel family in use.
    pub(crate) fn isa(&self) -> Isa {
        self.isa
    }

    #[cfg(test)]
    pub(crate) fn set_isa(&mut self, isa: Isa) {
        self.isa = isa;
    }

    /// Bytes of weights (all parts).
    pub(crate) fn weight_bytes(&self) -> usize {
        self.enc.seanet.bytes()
            + self.enc.transformer.bytes()
            + self.enc.downsample.bytes()
            + self.dec.transformer.bytes()
            + self.dec.seanet.bytes()
            + self.quantizer.bytes()
    }

    pub(crate) fn profile(&self) -> &MimiProfile {
        &self.profile
    }

    pub(crate) fn reset_profile(&mut self) {
        self.profile = MimiProfile::default();
    }

    pub(crate) fn reset_encoder(&mut self) {
        self.enc.seanet.reset();
        self.enc.transformer.reset();
        self.enc.downsample.reset();
    }

    pub(crate) fn reset_decoder(&mut self) {
        self.dec.upsample.reset();
        self.dec.transformer.reset();
        self.dec.seanet.reset();
    }

    /// `pcm`: whole frames -> `codes` (`[frames, K]`, row-major).
    pub(crate) fn encode(&mut self, pcm: &[f32], codes: &mut [u32]) {
        Self::encode_batch(&mut [streams::EncodeLane {
            m: self,
            pcm,
            codes,
        }]);
    }

    /// `codes` (`[frames, K]`) -> `pcm` (whole frames).
    pub(crate) fn decode(&mut self, codes: &[u32], pcm: &mut [f32]) {
        Self::decode_batch(&mut [streams::DecodeLane {
            m: self,
            codes,
            pcm,
        }]);
    }

    /// A new stream of these weights: a fresh state, buffers sized by its first frame.
    pub(crate) fn fresh(&self) -> CpuMimi {
        CpuMimi {
            enc: Encoder {
                seanet: self.enc.seanet.fresh(),
                transformer: self.enc.transformer.fresh(),
                downsample: self.enc.downsample.fresh(),
            },
            dec: Decoder {
                upsample: self.dec.upsample.fresh(),
                transformer: self.dec.transformer.fresh(),
                seanet: self.dec.seanet.fresh(),
                up: Vec::new(),
            },
            quantizer: self.quantizer.fresh(),
            latent: Vec::new(),
            profile: MimiProfile::default(),
            ..*self
        }
    }

    /// Whether `other` is a stream of this same loaded model (it shares the weights).
    pub(crate) fn same_weights(&self, other: &CpuMimi) -> bool {
        self.enc.transformer.same_weights(&other.enc.transformer)
            && self.dec.transformer.same_weights(&other.dec.transformer)
            && self.num_codebooks == other.num_codebooks
    }

    /// Bytes of streaming state and buffers held by this stream (the weights excluded).
    pub(crate) fn state_bytes(&self) -> usize {
        self.enc.seanet.state_bytes()
            + self.enc.transformer.state_bytes()
            + self.enc.downsample.state_bytes()
            + self.dec.upsample.state_bytes()
            + self.dec.transformer.state_bytes()
            + self.dec.seanet.state_bytes()
            + self.quantizer.state_bytes()
            + (self.latent.capacity() + self.dec.up.capacity()) * 4
    }
}
