//! Where a frame's time goes: wall time per part of the codec and per kind of layer, summed
//! over the calls since the last reset (two `Instant` reads per layer, a few microseconds a
//! frame).

use std::time::{Duration, Instant};

/// The codec's parts, in processing order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// Encoder SEANet (convolutions, 24 kHz -> 25 Hz).
    EncoderSeanet,
    /// Encoder transformer.
    EncoderTransformer,
    /// Learnt downsampling 25 -> 12.5 Hz.
    Downsample,
    /// Quantizer: projections and nearest-centroid search.
    QuantizerEncode,
    /// Quantizer: centroid sums and output projections.
    QuantizerDecode,
    /// Learnt (depthwise transposed) upsampling 12.5 -> 25 Hz.
    Upsample,
    /// Decoder transformer.
    DecoderTransformer,
    /// Decoder SEANet (transposed convolutions, 25 Hz -> 24 kHz).
    DecoderSeanet,
}

/// Kinds of layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Streaming convolutions (including the residual blocks' and the downsampling).
    Conv,
    /// Transposed convolutions (including the upsampling) with their overlap-add.
    ConvTr,
    /// ELU activations.
    Elu,
    /// Transformer linear layers (attention projections, feed-forward).
    Linear,
    /// Attention over the KV cache (RoPE, cache update, scores, softmax, values).
    Attention,
    /// Layer norms, GELU.
    Norm,
    /// Quantizer input/output projections and centroid sums.
    QuantProj,
    /// Quantizer nearest-centroid search.
    QuantSearch,
}

/// Number of [`Part`]s.
pub const PARTS: usize = 8;
/// Number of [`Kind`]s.
pub const KINDS: usize = 8;

impl Part {
    /// All parts, in processing order.
    pub const ALL: [Part; PARTS] = [
        Part::EncoderSeanet,
        Part::EncoderTransformer,
        Part::Downsample,
        Part::QuantizerEncode,
        Part::QuantizerDecode,
        Part::Upsample,
        Part::DecoderTransformer,
        Part::DecoderSeanet,
    ];

    /// A snake_case name for reports.
    pub fn name(self) -> &'static str {
        match self {
            Part::EncoderSeanet => "encoder_seanet",
            Part::EncoderTransformer => "encoder_transformer",
            Part::Downsample => "downsample",
            Part::QuantizerEncode => "quantizer_encode",
            Part::QuantizerDecode => "quantizer_decode",
            Part::Upsample => "upsample",
            Part::DecoderTransformer => "decoder_transformer",
            Part::DecoderSeanet => "decoder_seanet",
        }
    }
}

impl Kind {
    /// All kinds.
    pub const ALL: [Kind; KINDS] = [
        Kind::Conv,
        Kind::ConvTr,
        Kind::Elu,
        Kind::Linear,
        Kind::Attention,
        Kind::Norm,
        Kind::QuantProj,
        Kind::QuantSearch,
    ];

    /// A snake_case name for reports.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Conv => "conv",
            Kind::ConvTr => "conv_transposed",
            Kind::Elu => "elu",
            Kind::Linear => "linear",
            Kind::Attention => "attention_kv",
            Kind::Norm => "norm_gelu",
            Kind::QuantProj => "quantizer_projection",
            Kind::QuantSearch => "quantizer_search",
        }
    }
}

/// Time per (part, kind), summed since the last reset.
#[derive(Debug, Clone, Default)]
pub struct MimiProfile {
    cells: [[Duration; KINDS]; PARTS],
    /// Parts timed as a whole, without a split by kind (the candle engine).
    whole: [Duration; PARTS],
    /// Frames encoded and decoded since the reset.
    frames: [usize; 2],
}

impl MimiProfile {
    /// Time spent in `kind` layers of `part`.
    pub fn get(&self, part: Part, kind: Kind) -> Duration {
        self.cells[part as usize][kind as usize]
    }

    /// Time spent in `part`.
    pub fn part(&self, part: Part) -> Duration {
        self.cells[part as usize].iter().sum::<Duration>() + self.whole[part as usize]
    }

    /// Whether the time is split by kind of layer (the CPU engine's is; the candle engine
    /// times its parts only).
    pub fn kinds_timed(&self) -> bool {
        self.whole.iter().all(Duration::is_zero)
    }

    /// Time spent in `kind` layers, all parts.
    pub fn kind(&self, kind: Kind) -> Duration {
        self.cells.iter().map(|c| c[kind as usize]).sum()
    }

    /// Frames encoded and frames decoded since the reset.
    pub fn frames(&self) -> (usize, usize) {
        (self.frames[0], self.frames[1])
    }

    pub(crate) fn count(&mut self, encode: bool, frames: usize) {
        self.frames[usize::from(!encode)] += frames;
    }
}

/// Times whole parts one after the other, on the CPU only: candle's CPU ops have finished
/// when they return, CUDA's are only queued (timing them would need a synchronisation per
/// part in the hot path).
#[derive(Debug)]
pub(crate) struct PartClock<'a> {
    p: Option<&'a mut MimiProfile>,
    t0: Instant,
}

impl<'a> PartClock<'a> {
    pub(crate) fn new(p: &'a mut MimiProfile, device: &candle_core::Device) -> Self {
        PartClock {
            p: device.is_cpu().then_some(p),
            t0: Instant::now(),
        }
    }

    /// Adds the time since the last lap to `part`.
    pub(crate) fn lap(&mut self, part: Part) {
        if let Some(p) = self.p.as_deref_mut() {
            let now = Instant::now();
            p.whole[part as usize] += now - self.t0;
            self.t0 = now;
        }
    }
}

/// The running profile with the part being processed.
#[derive(Debug)]
pub(crate) struct Prof<'a> {
    pub(crate) p: &'a mut MimiProfile,
    pub(crate) part: Part,
}

impl Prof<'_> {
    /// Adds the time since `t0` to (current part, `kind`) and returns now.
    #[inline]
    pub(crate) fn lap(&mut self, kind: Kind, t0: Instant) -> Instant {
        let now = Instant::now();
        self.p.cells[self.part as usize][kind as usize] += now - t0;
        now
    }
}
