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

    /// `[B, 1, N * frame]` audio of several streams -> `[B * N, latent]` (stream by stream).
    fn step_batch(
        parts: &mut [&mut EncoderPart],
        x: &Tensor,
        clock: &mut PartClock,
    ) -> candle_core::Result<Tensor> {
        let batch = parts.len();
        let mut seanets: Vec<&mut Seanet> = parts.iter_mut().map(|p| &mut p.seanet).collect();
        let h = Seanet::step_batch(&mut seanets, x)?; // [B, D, 2N]
        clock.lap(Part::EncoderSeanet);
        let (_, d, steps) = h.dims3()?;
        let mut trs: Vec<&mut Transformer> = parts.iter_mut().map(|p| &mut p.transformer).collect();
        let h = Transformer::step_batch(&mut trs, &rows(&h)?)?; // [B * 2N, D]
        clock.lap(Part::EncoderTransformer);
        let h = h
            .reshape((batch, steps, d))?
            .transpose(1, 2)?
            .contiguous()?;
        let mut downs: Vec<&mut StreamConv1d> =
            parts.iter_mut().map(|p| &mut p.downsample).collect();
        let h = rows(&StreamConv1d::step_batch(&mut downs, &h)?); // [B * N, D]
        clock.lap(Part::Downsample);
        h
    }
}

/// `[B, C, T]` -> `[B * T, C]`: each stream's time steps as rows, stream by stream.
fn rows(x: &Tensor) -> candle_core::Result<Tensor> {
    let (batch, c, t) = x.dims3()?;
    x.transpose(1, 2)?.reshape((batch * t, c))
}

impl DecoderPart {
    pub(crate) fn reset(&mut self) {
        self.upsample.reset();
        self.transformer.reset();
        self.seanet.reset();
    }

    /// `[B * N, latent]` of several streams (stream by stream) -> `[B, 1, N * frame]` audio.
    fn step_batch(
        parts: &mut [&mut DecoderPart],
        z: &Tensor,
        clock: &mut PartClock,
    ) -> candle_core::Result<Tensor> {
        let batch = parts.len();
        let (n, latent) = (z.dim(0)? / batch, z.dim(1)?);
        let z = z
            .reshape((batch, n, latent))?
            .transpose(1, 2)?
            .contiguous()?;
        let mut ups: Vec<&mut StreamConvTr1d> = parts.iter_mut().map(|p| &mut p.upsample).collect();
        let h = StreamConvTr1d::step_batch(&mut ups, &z)?; // [B, D, 2N]
        clock.lap(Part::Upsample);
        let (_, d, steps) = h.dims3()?;
        let mut trs: Vec<&mut Transformer> = parts.iter_mut().map(|p| &mut p.transformer).collect();
        let h = Transformer::step_batch(&mut trs, &rows(&h)?)?; // [B * 2N, D]
        clock.lap(Part::DecoderTransformer);
        let h = h
            .reshape((batch, steps, d))?
            .transpose(1, 2)?
            .contiguous()?;
        let mut seanets: Vec<&mut Seanet> = parts.iter_mut().map(|p| &mut p.seanet).collect();
        let y = Seanet::step_batch(&mut seanets, &h);
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

    /// Whether `other` holds these very weights (a stream of the same loaded model).
    pub(crate) fn same_weights(&self, other: &CandleMimi) -> bool {
        self.quantizer.same_weights(&other.quantizer)
    }

    /// Whole frames of audio -> `[frames, K]` codes (row-major).
    pub(crate) fn encode(&mut self, pcm: &[f32]) -> Result<Vec<u32>, MimiError> {
        Self::encode_batch(&mut [self], &[pcm])
    }

    /// `[frames, K]` codes (row-major) -> whole frames of audio.
    pub(crate) fn decode(&mut self, codes: &[u32], k: usize) -> Result<Vec<f32>, MimiError> {
        Self::decode_batch(&mut [self], &[codes], k)
    }

    /// Several streams of one model, each `pcm[b]` (whole frames, the same number for every
    /// stream) continuing `ms[b]`'s encoder: returns their `[frames, K]` codes one stream
    /// after the other. The weights are read once for all streams; the time goes to the
    /// first stream's profile.
    pub(crate) fn encode_batch(
        ms: &mut [&mut CandleMimi],
        pcm: &[&[f32]],
    ) -> Result<Vec<u32>, MimiError> {
        let (device, dtype) = (ms[0].device.clone(), ms[0].dtype);
        let len = pcm.first().map_or(0, |p| p.len());
        let x = Tensor::from_slice(&pcm.concat(), (ms.len(), 1, len), &device)?.to_dtype(dtype)?;
        let mut profile = std::mem::take(&mut ms[0].profile);
        let mut clock = PartClock::new(&mut profile, &device);
        let mut encs: Vec<&mut EncoderPart> = ms.iter_mut().map(|m| &mut m.enc).collect();
        let z = EncoderPart::step_batch(&mut encs, &x, &mut clock);
        let frames = z.as_ref().map_or(0, |z| z.dims()[0]);
        let c = z.and_then(|z| ms[0].quantizer.encode(&z)?.flatten_all()?.to_vec1::<u32>());
        clock.lap(Part::QuantizerEncode);
        profile.count(true, frames);
        ms[0].profile = profile;
        Ok(c?)
    }

    /// Several streams of one model, each `codes[b]` (`[frames, K]`, row-major, the same
    /// number of frames for every stream) continuing `ms[b]`'s decoder: returns their audio
    /// one stream after the other.
    pub(crate) fn decode_batch(
        ms: &mut [&mut CandleMimi],
        codes: &[&[u32]],
        k: usize,
    ) -> Result<Vec<f32>, MimiError> {
        let device = ms[0].device.clone();
        let flat = codes.concat();
        let c = Tensor::from_slice(&flat, (flat.len() / k, k), &device)?;
        let mut profile = std::mem::take(&mut ms[0].profile);
        let mut clock = PartClock::new(&mut profile, &device);
        let z = ms[0]
            .quantizer
            .decode(&c)
            .and_then(|z| z.to_dtype(ms[0].dtype));
        clock.lap(Part::QuantizerDecode);
        let mut decs: Vec<&mut DecoderPart> = ms.iter_mut().map(|m| &mut m.dec).collect();
        let y = z.and_then(|z| DecoderPart::step_batch(&mut decs, &z, &mut clock));
        let y = y.and_then(|y| y.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>());
        clock.lap(Part::DecoderSeanet);
        profile.count(false, flat.len() / k);
        ms[0].profile = profile;
        Ok(y?)
    }
}
