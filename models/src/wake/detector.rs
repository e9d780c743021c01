//! Streaming detection: audio to features ([`Frontend`]), features to the model's input
//! (quantized `stride` frames at a time, as `pymicro-wakeword` does), one inference per stride,
//! and the mean of the last `sliding_window_size` probabilities against the cutoff.

use std::collections::VecDeque;

use super::frontend::{
    Frontend, FEATURE_SCALE, NUM_CHANNELS, SAMPLE_RATE, STEP_SAMPLES, WINDOW_SAMPLES,
};
use super::interp::Interpreter;
use super::tflite::{dtype, TensorDef};
use super::{WakeError, WakeModel};

/// The result of one inference.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Inference {
    /// Inference number, from 0.
    pub index: u64,
    /// End of the audio it has heard, in seconds from the start of the stream.
    pub time_s: f64,
    /// The model's raw 8-bit output.
    pub raw: u8,
    /// This inference's probability (the output dequantized).
    pub probability: f32,
    /// Mean probability over the sliding window; 0 until the window is full (as the reference).
    pub mean: f64,
    /// `mean` is above the cutoff.
    pub above: bool,
    /// The first inference of a run above the cutoff: one wake-word detection.
    pub detection: bool,
}

fn quant_of(t: &TensorDef) -> Result<(f64, i32), WakeError> {
    match (t.quant.scales.first(), t.quant.zero_points.first()) {
        (Some(&s), Some(&z)) => Ok((f64::from(s), z as i32)),
        _ => Err(WakeError::BadModel(format!(
            "tensor {} has no quantization",
            t.name
        ))),
    }
}

/// A wake-word detector over a stream of 16 kHz samples.
pub struct Detector {
    frontend: Frontend,
    interp: Interpreter,
    stride: usize,
    pending: Vec<u16>,
    input_q: (f64, i32, bool),
    output_q: (f64, i32, bool),
    window: VecDeque<i32>,
    window_size: usize,
    cutoff: f64,
    frames: u64,
    inferences: u64,
    was_above: bool,
}

impl Detector {
    /// A detector in its initial state, with the model's own cutoff.
    pub fn new(model: &WakeModel) -> Result<Detector, WakeError> {
        let interp = Interpreter::new(&model.def)?;
        let input = interp.input();
        let stride = match input.shape.as_slice() {
            [1, s, c] if *s > 0 && *c as usize == NUM_CHANNELS => *s as usize,
            other => {
                return Err(WakeError::BadModel(format!(
                    "input shape {other:?}, expected [1, stride, 40]"
                )))
            }
        };
        let (si, zi) = quant_of(input)?;
        let (so, zo) = quant_of(interp.output())?;
        let input_q = (si, zi, input.dtype == dtype::INT8);
        let output_q = (so, zo, interp.output().dtype == dtype::INT8);
        Ok(Detector {
            frontend: Frontend::new(),
            interp,
            stride,
            pending: Vec::with_capacity(stride * NUM_CHANNELS),
            input_q,
            output_q,
            window: VecDeque::new(),
            window_size: model.config.micro.sliding_window_size,
            cutoff: model.config.micro.probability_cutoff,
            frames: 0,
            inferences: 0,
            was_above: false,
        })
    }

    /// Overrides the cutoff (`[wake] sensitivity`).
    pub fn set_cutoff(&mut self, cutoff: f64) {
        self.cutoff = cutoff;
    }

    /// The cutoff in use.
    pub fn cutoff(&self) -> f64 {
        self.cutoff
    }

    /// The interpreter (for tests and diagnosis).
    #[doc(hidden)]
    pub fn interpreter(&self) -> &Interpreter {
        &self.interp
    }

    /// Back to the initial state (frontend, model state, window).
    pub fn reset(&mut self) {
        self.frontend.reset();
        self.interp.reset();
        self.pending.clear();
        self.window.clear();
        self.frames = 0;
        self.inferences = 0;
        self.was_above = false;
    }

    /// Feeds 16 kHz samples; calls `sink` after every inference.
    pub fn push_samples(
        &mut self,
        samples: &[i16],
        mut sink: impl FnMut(&Inference),
    ) -> Result<(), WakeError> {
        let mut frames = Vec::new();
        self.frontend.push(samples, |f| frames.push(*f));
        for f in &frames {
            if let Some(inf) = self.push_features(f)? {
                sink(&inf);
            }
        }
        Ok(())
    }

    /// Feeds one feature frame; runs the model every `stride` frames.
    pub fn push_features(
        &mut self,
        frame: &[u16; NUM_CHANNELS],
    ) -> Result<Option<Inference>, WakeError> {
        self.frames += 1;
        self.pending.extend_from_slice(frame);
        if self.pending.len() < self.stride * NUM_CHANNELS {
            return Ok(None);
        }
        let (scale, zp, signed) = self.input_q;
        for (b, &v) in self.interp.input_bytes().iter_mut().zip(&self.pending) {
            // As the reference: the float feature over the scale, plus the zero point, rounded
            // half to even; saturated to the type (the reference's cast would wrap instead).
            let q =
                (f64::from(f32::from(v) * FEATURE_SCALE) / scale + f64::from(zp)).round_ties_even();
            *b = if signed {
                q.clamp(-128.0, 127.0) as i8 as u8
            } else {
                q.clamp(0.0, 255.0) as u8
            };
        }
        self.pending.clear();
        self.interp.invoke()?;
        Ok(Some(self.score()))
    }

    fn score(&mut self) -> Inference {
        let raw = self.interp.output_bytes().first().copied().unwrap_or(0);
        let (scale, zp, signed) = self.output_q;
        let q = if signed {
            i32::from(raw as i8)
        } else {
            i32::from(raw)
        } - zp;
        if self.window.len() == self.window_size {
            self.window.pop_front();
        }
        self.window.push_back(q);
        let mean = if self.window.len() < self.window_size {
            0.0
        } else {
            self.window.iter().map(|&v| f64::from(v)).sum::<f64>() * scale / self.window_size as f64
        };
        let above = mean > self.cutoff;
        let inf = Inference {
            index: self.inferences,
            time_s: ((self.frames - 1) * STEP_SAMPLES as u64 + WINDOW_SAMPLES as u64) as f64
                / f64::from(SAMPLE_RATE),
            raw,
            probability: (f64::from(q) * scale) as f32,
            mean,
            above,
            detection: above && !self.was_above,
        };
        self.was_above = above;
        self.inferences += 1;
        inf
    }
}
