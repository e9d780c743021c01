//! Several independent streams of one codec in one pass: each layer runs for every stream
//! before the next, so a weight matrix is read from memory once for all of them (the
//! streams' rows are the jobs of one product, see [`super::gemm::gemm_jobs`]), while each
//! stream keeps its own convolution buffers, key/value rings and positions. A stream's
//! results are the bits it gets alone.
//!
//! Every stream of a call processes the same number of frames.

use std::time::Instant;

use super::conv::{grow, run_convs, Conv};
use super::gemm::MAX_JOBS;
use super::profile::{Kind, MimiProfile, Part, Prof};
use super::quantizer::Quantizer;
use super::seanet::Seanet;
use super::transformer::Transformer;
use super::CpuMimi;

/// Per-stream parts of one batched layer, on the stack up to [`MAX_JOBS`] streams.
type Batch<T> = smallvec::SmallVec<[T; MAX_JOBS]>;

/// One stream of a batched encode: whole frames of `pcm` -> `codes` (`[frames, K]`).
pub(crate) struct EncodeLane<'a> {
    pub(crate) m: &'a mut CpuMimi,
    pub(crate) pcm: &'a [f32],
    pub(crate) codes: &'a mut [u32],
}

/// One stream of a batched decode: `codes` (`[frames, K]`) -> whole frames of `pcm`.
pub(crate) struct DecodeLane<'a> {
    pub(crate) m: &'a mut CpuMimi,
    pub(crate) codes: &'a [u32],
    pub(crate) pcm: &'a mut [f32],
}

impl CpuMimi {
    /// Encodes every lane, continuing each stream. The time goes to the first stream's
    /// profile, counted as its frames.
    pub(crate) fn encode_batch(lanes: &mut [EncodeLane]) {
        let Some(l0) = lanes.first_mut() else {
            return;
        };
        let (isa, k, latent) = (l0.m.isa, l0.m.num_codebooks, l0.m.latent_dim);
        let frames = l0.codes.len() / k;
        let mut profile = std::mem::take(&mut l0.m.profile);
        let mut prof = Prof {
            p: &mut profile,
            part: Part::EncoderSeanet,
        };
        let mut seanets: Batch<(&mut Seanet, &[f32])> = lanes
            .iter_mut()
            .map(|l| (&mut l.m.enc.seanet, l.pcm))
            .collect();
        Seanet::step_batch(isa, &mut seanets, &mut prof);
        drop(seanets);
        prof.part = Part::EncoderTransformer;
        let mut trs: Batch<(&mut Transformer, &mut [f32])> = lanes
            .iter_mut()
            .map(|l| {
                let e = &mut l.m.enc;
                let h = e.seanet.output();
                let slot = e.downsample.input(h.len() / latent);
                slot.copy_from_slice(h);
                (&mut e.transformer, slot)
            })
            .collect();
        Transformer::step_batch(isa, &mut trs, &mut prof);
        drop(trs);
        prof.part = Part::Downsample;
        let t0 = Instant::now();
        let mut down: Batch<(&mut Conv, &mut [f32])> = lanes
            .iter_mut()
            .map(|l| {
                let z = grow(&mut l.m.latent, frames * latent);
                (&mut l.m.enc.downsample, z)
            })
            .collect();
        run_convs(isa, &mut down, false);
        drop(down);
        prof.lap(Kind::Conv, t0);
        prof.part = Part::QuantizerEncode;
        let mut qs: Batch<(&mut Quantizer, &[f32], &mut [u32])> = lanes
            .iter_mut()
            .map(|l| {
                let m = &mut *l.m;
                (
                    &mut m.quantizer,
                    &m.latent[..frames * latent],
                    &mut *l.codes,
                )
            })
            .collect();
        Quantizer::encode_batch(isa, &mut qs, &mut prof);
        drop(qs);
        finish(lanes.first_mut().map(|l| &mut *l.m), profile, true, frames);
    }

    /// Decodes every lane, continuing each stream. The time goes to the first stream's
    /// profile, counted as its frames.
    pub(crate) fn decode_batch(lanes: &mut [DecodeLane]) {
        let Some(l0) = lanes.first_mut() else {
            return;
        };
        let (isa, k, latent) = (l0.m.isa, l0.m.num_codebooks, l0.m.latent_dim);
        let frames = l0.codes.len() / k;
        let mut profile = std::mem::take(&mut l0.m.profile);
        let mut prof = Prof {
            p: &mut profile,
            part: Part::QuantizerDecode,
        };
        let mut up_len = 0;
        for l in lanes.iter_mut() {
            let m = &mut *l.m;
            let z = grow(&mut m.latent, frames * latent);
            prof.part = Part::QuantizerDecode;
            m.quantizer.decode(isa, l.codes, k, z, &mut prof);
            prof.part = Part::Upsample;
            let t0 = Instant::now();
            let d = &mut m.dec;
            up_len = d.upsample.stride() * z.len();
            d.upsample.run(z, grow(&mut d.up, up_len));
            prof.lap(Kind::ConvTr, t0);
        }
        prof.part = Part::DecoderTransformer;
        let mut trs: Batch<(&mut Transformer, &mut [f32])> = lanes
            .iter_mut()
            .map(|l| {
                let d = &mut l.m.dec;
                (&mut d.transformer, &mut d.up[..up_len])
            })
            .collect();
        Transformer::step_batch(isa, &mut trs, &mut prof);
        drop(trs);
        prof.part = Part::DecoderSeanet;
        let mut seanets: Batch<(&mut Seanet, &[f32])> = lanes
            .iter_mut()
            .map(|l| {
                let d = &mut l.m.dec;
                (&mut d.seanet, &d.up[..up_len])
            })
            .collect();
        Seanet::step_batch(isa, &mut seanets, &mut prof);
        drop(seanets);
        for l in lanes.iter_mut() {
            l.pcm.copy_from_slice(l.m.dec.seanet.output());
        }
        finish(lanes.first_mut().map(|l| &mut *l.m), profile, false, frames);
    }
}

/// Gives the batch's profile back to its first stream, with its frames counted.
fn finish(first: Option<&mut CpuMimi>, mut profile: MimiProfile, encode: bool, frames: usize) {
    if let Some(m) = first {
        profile.count(encode, frames);
        m.profile = profile;
    }
}
