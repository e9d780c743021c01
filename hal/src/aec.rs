//! Acoustic echo cancellation with the `aec3` crate (a Rust port of WebRTC AEC3).
//!
//! Takes 24 kHz mono; runs AEC3 at 32 kHz (its native two-band rate: at 24 kHz AEC3
//! resamples internally with a much slower sinc resampler than rubato's FFT one) in 10 ms
//! blocks; an 80 ms frame is eight of them. AEC3 estimates the echo path delay itself;
//! [`AecOptions::initial_delay_ms`] seeds it with the known playback buffer latency.

use crate::resample::StreamResampler;
use crate::{HalError, MODEL_RATE};
use aec3::nodes::audio::AudioFormat;
use aec3::pipelines::linear::{self, LinearPipeline};

/// The rate AEC3 runs at.
const AEC_RATE: u32 = 32_000;
/// Samples in one 10 ms block at 24 kHz (the caller's granularity).
const BLOCK: usize = (MODEL_RATE / 100) as usize;
/// Samples in one 10 ms AEC3 block at 32 kHz.
const AEC_BLOCK: usize = (AEC_RATE / 100) as usize;

/// Echo canceller options.
#[derive(Debug, Clone, Default)]
pub struct AecOptions {
    /// Run WebRTC noise suppression after the canceller.
    pub noise_suppression: bool,
    /// Run WebRTC's adaptive digital gain control (AGC2) after the canceller.
    pub agc: bool,
    /// A first guess of the far-to-near delay in ms (e.g. the playback buffer length).
    pub initial_delay_ms: Option<i32>,
}

impl AecOptions {
    /// The options every caller uses for a live speaker: AEC3's delay search seeded with the
    /// playback device's buffer (what was handed to the device is heard that much later).
    pub fn for_playback(
        playback: &crate::DeviceParams,
        noise_suppression: bool,
        agc: bool,
    ) -> Self {
        let ms = playback.buffer_frames as u64 * 1000 / playback.rate.max(1) as u64;
        Self {
            noise_suppression,
            agc,
            initial_delay_ms: Some(ms.min(i32::MAX as u64) as i32),
        }
    }
}

/// What the canceller reports about itself.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AecMetrics {
    /// Echo return loss (far end to microphone) in dB, AEC3's own estimate.
    pub erl_db: f64,
    /// Echo return loss enhancement in dB, AEC3's own estimate.
    pub erle_db: f64,
    /// AEC3's estimate of the far-to-near delay in ms.
    pub delay_ms: i32,
}

/// A 24 kHz mono echo canceller.
pub struct EchoCanceller {
    pipeline: LinearPipeline,
    far_up: StreamResampler,
    near_up: StreamResampler,
    out_down: StreamResampler,
    far32: [f32; AEC_BLOCK],
    near32: [f32; AEC_BLOCK],
    out32: [f32; AEC_BLOCK],
    metrics: Option<AecMetrics>,
}

fn aec_err(e: impl std::fmt::Display) -> HalError {
    HalError::Aec(e.to_string())
}

impl EchoCanceller {
    /// Builds a canceller (high-pass filter always on; NS and AGC as asked).
    pub fn new(opts: &AecOptions) -> Result<Self, HalError> {
        let format = AudioFormat::ten_ms(AEC_RATE, 1);
        let mut b = linear::builder(format, format)
            .enable_high_pass_filter(true)
            .enable_noise_suppression(opts.noise_suppression)
            .enable_gain_controller2(opts.agc)
            // The fullband post filter only acts at 48 kHz.
            .enable_post_filter(false)
            .export_metrics(true);
        if let Some(d) = opts.initial_delay_ms {
            b = b.initial_delay_ms(d);
        }
        Ok(Self {
            pipeline: b.build().map_err(aec_err)?,
            far_up: StreamResampler::new(MODEL_RATE, AEC_RATE)?,
            near_up: StreamResampler::new(MODEL_RATE, AEC_RATE)?,
            out_down: StreamResampler::new(AEC_RATE, MODEL_RATE)?,
            far32: [0.0; AEC_BLOCK],
            near32: [0.0; AEC_BLOCK],
            out32: [0.0; AEC_BLOCK],
            metrics: None,
        })
    }

    /// Cancels the echo of `far` (what was sent to the speaker, same length and time span as
    /// `near`) from `near` (the microphone) in place. Lengths must be equal multiples of 240
    /// samples (10 ms); an 80 ms frame is fine.
    pub fn process(&mut self, far: &[f32], near: &mut [f32]) -> Result<(), HalError> {
        if far.len() != near.len() || !near.len().is_multiple_of(BLOCK) {
            return Err(HalError::Aec(format!(
                "far ({}) and near ({}) must have the same length, a multiple of {BLOCK} \
                 samples (10 ms at 24 kHz)",
                far.len(),
                near.len()
            )));
        }
        for (f, n) in far.chunks_exact(BLOCK).zip(near.chunks_exact_mut(BLOCK)) {
            // 240 samples at 24 kHz are exactly 320 at 32 kHz, so each 10 ms block in gives
            // one block to AEC3 and one back out, with a fixed resampling delay.
            self.far_up.push(f)?;
            self.near_up.push(n)?;
            while self.far_up.pop(&mut self.far32) && self.near_up.pop(&mut self.near32) {
                self.pipeline
                    .handle_render_frame(&self.far32)
                    .map_err(aec_err)?;
                self.pipeline
                    .process_capture_frame(&self.near32, &mut self.out32)
                    .map_err(aec_err)?;
                self.out_down.push(&self.out32)?;
            }
            if !self.out_down.pop(n) {
                n.iter_mut().for_each(|v| *v = 0.0);
            }
        }
        while let Some(m) = self.pipeline.try_pull_metrics().map_err(aec_err)? {
            let m = m.payload();
            self.metrics = Some(AecMetrics {
                erl_db: m.echo_return_loss,
                erle_db: m.echo_return_loss_enhancement,
                delay_ms: m.delay_ms,
            });
        }
        Ok(())
    }

    /// The latest metrics, once AEC3 has produced some.
    pub fn metrics(&self) -> Option<AecMetrics> {
        self.metrics
    }
}

/// Whole-signal echo return loss enhancement in dB: `10 log10(sum mic^2 / sum out^2)` over
/// samples `skip..` (skip the convergence time to get the steady state). Returns 0 for
/// silence.
pub fn erle_db(mic: &[f32], out: &[f32], skip: usize) -> f64 {
    let n = mic.len().min(out.len());
    let skip = skip.min(n);
    let e = |x: &[f32]| x[skip..n].iter().map(|&v| (v as f64).powi(2)).sum::<f64>();
    let (pm, po) = (e(mic), e(out));
    if pm <= 0.0 {
        return 0.0;
    }
    10.0 * (pm / po.max(1e-20)).log10()
}
