//! Mimi on candle tensors: the implementation for devices other than the CPU (CUDA), where
//! candle's kernels run. The CPU has its own engine ([`super::cpu`]).

use candle_core::{DType, Device, Tensor};

use super::config::MimiConfig;
use super::conv::{StreamConv1d, StreamConvTr1d};
use super::cpu::profile::{MimiProfile, Part, PartClock};
use super::load::Vars;
use super::quantizer::Quantizer;
use super::seanet::Seanet;
use super::transformer::Transformer;
use super::MimiError;

/// Encoder side: SEANet, transformer, learnt downsampling.
#[derive(Debug, Clone)]
pub(crate) struct EncoderPart {
    seanet: Seanet,
    transformer: Transformer,
    downsample: StreamConv1d,
}

/// Decoder side: learnt (depthwise) upsampling, transformer, SEANet.
#[derive(Debug, Clone)]
pub(crate) struct DecoderPart {
    upsample: StreamConvTr1d,
    transformer: Transformer,
    seanet: Seanet,
}

/// The codec on candle tensors.
#[derive(Debug, Clone)]
pub(crate) struct CandleMimi {
    pub(crate) enc: EncoderPart,
    pub(crate) dec: DecoderPart,
    quantizer: Quantizer,
    device: Device,
    /// Compute dtype (the quantizer's is f32).
    dtype: DType,
    /// Time per part (on the CPU: the "before" of the CPU engine in `bench mimi`).
    profile: MimiProfile,
}

impl EncoderPart {
    pub(crate) fn reset(&mut self) {
        self.seanet.reset();
        self.transformer.reset();
        self.downsample.reset();
    }

    /// `[1, 1, N * frame]` audio -> `[N, latent]`.
    fn step(&mut self, x: &Tensor, clock: &mut PartClock) -> candle_core::Result<Tensor> {
        let h = self.seanet.step(x)?; // [1, D, 2N]
        clock.lap(Part::EncoderSeanet);
        let h = self.transformer.step(&h.squeeze(0)?.t()?.contiguous()?)?; // [2N, D]
        clock.lap(Part::EncoderTransformer);
        let h = self.downsample.step(&h.t()?.unsqueeze(0)?.contiguous()?)?; // [1, D, N]
        let h = h.squeeze(0)?.t()?.contiguous();
        clock.lap(Part::Downsample);
        h
    }
}

impl DecoderPart {
    pub(crate) fn reset(&mut self) {
        self.upsample.reset();
        self.transformer.reset();
        self.seanet.reset();
    }

    /// `[N, latent]` -> `[1, 1, N * frame]` audio.
    fn step(&mut self, z: &Tensor, clock: &mut PartClock) -> candle_core::Result<Tensor> {
        let h = self.upsample.step(&z.t()?.unsqueeze(0)?.contiguous()?)?; // [1, D, 2N]
        clock.lap(Part::Upsample);
        let h = self.transformer.step(&h.squeeze(0)?.t()?.contiguous()?)?; // [2N, D]
        clock.lap(Part::DecoderTransformer);
        let y = self.seanet.step(&h.t()?.unsqueeze(0)?.contiguous()?);
        clock.lap(Part::DecoderSeanet);
        y
    }
}

impl CandleMimi {
    /// Builds the codec from `v`, asking for every tensor of a `cfg` checkpoint (in the order
    /// of the tensor list [`super::expected_tensors`] reports, which the random writer's
    /// values follow).
    pub(crate) fn build(
        v: &Vars,
        cfg: &MimiConfig,
        num_codebooks: usize,
    ) -> Result<Self, MimiError> {
        let g = cfg.downsample_stride();
        let d = cfg.seanet.dimension;
        let enc_seanet = Seanet::encoder(&v.pp("encoder"), &cfg.seanet, cfg.frame_size())?;
        let dec_seanet = Seanet::decoder(&v.pp("decoder"), &cfg.seanet, g)?;
        let enc_tr = Transformer::load(&v.pp("encoder_transformer"), &cfg.transformer, g)?;
        let dec_tr = Transformer::load(&v.pp("decoder_transformer"), &cfg.transformer, g)?;
        let quantizer = Quantizer::load(&v.pp("quantizer"), &cfg.quantizer, d, num_codebooks)?;
        let down = v.get("downsample.conv.conv.conv.weight", &[d, d, 2 * g])?;
        let up = v.get("upsample.convtr.convtr.convtr.weight", &[d, 1, 2 * g])?;
        Ok(CandleMimi {
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
            device: v.device(),
            dtype: v.dtype(),
            profile: MimiProfile::default(),
        })
    }

    pub(crate) fn dtype(&self) -> DType {
        self.dtype
    }

    /// Time per part since the last reset; `None` off the CPU (see [`PartClock`]).
    pub(crate) fn profile(&self) -> Option<&MimiProfile> {
        self.device.is_cpu().then_some(&self.profile)
    }

    pub(crate) fn reset_profile(&mut self) {
        self.profile = MimiProfile::default();
    }

    /// Whole frames of audio -> `[frames, K]` codes (row-major).
    pub(crate) fn encode(&mut self, pcm: &[f32]) -> Result<Vec<u32>, MimiError> {
        let x = Tensor::from_slice(pcm, (1, 1, pcm.len()), &self.device)?.to_dtype(self.dtype)?;
        let mut clock = PartClock::new(&mut self.profile, &self.device);
        let z = self.enc.step(&x, &mut clock)?;
        let c = self.quantizer.encode(&z)?.flatten_all()?.to_vec1::<u32>()?;
        clock.lap(Part::QuantizerEncode);
        self.profile.count(true, z.dim(0)?);
        Ok(c)
    }

    /// `[frames, K]` codes (row-major) -> whole frames of audio.
    pub(crate) fn decode(&mut self, codes: &[u32], k: usize) -> Result<Vec<f32>, MimiError> {
        let frames = codes.len() / k;
        let c = Tensor::from_slice(codes, (frames, k), &self.device)?;
        let mut clock = PartClock::new(&mut self.profile, &self.device);
        let z = self.quantizer.decode(&c)?.to_dtype(self.dtype)?;
        clock.lap(Part::QuantizerDecode);
        let y = self.dec.step(&z, &mut clock)?;
        let y = y.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
        clock.lap(Part::DecoderSeanet);
        self.profile.count(false, frames);
        Ok(y)
    }
}
