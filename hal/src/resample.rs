//! Sample-rate conversion with rubato: whole clips (files) and streams (devices).

use crate::HalError;
use rubato::audioadapter_buffers::direct::InterleavedSlice;
use rubato::{Fft, FixedSync, Resampler};

/// Input block of the streaming resampler in milliseconds: 10 ms keeps the added delay low
/// while the FFT stays cheap.
const STREAM_BLOCK_MS: usize = 10;

fn rubato_err(e: impl std::fmt::Display) -> HalError {
    HalError::Resample(e.to_string())
}

/// Largest sample magnitude accepted (audio is in [-1, 1]): beyond it the file is damaged,
/// and rubato's FFT overflows to NaN and panics (found by fuzzing).
pub const MAX_SAMPLE: f32 = 1e6;

/// A sample no audio path can use: NaN, infinite, or far outside [-1, 1].
pub(crate) fn unusable(x: f32) -> bool {
    x.is_nan() || x.abs() > MAX_SAMPLE
}

/// Refuses unusable samples, which the FFT would spread over whole blocks (and which make
/// rubato panic).
fn check_finite(samples: &[f32]) -> Result<(), HalError> {
    match samples.iter().position(|&x| unusable(x)) {
        None => Ok(()),
        Some(i) => Err(HalError::Resample(format!(
            "input sample {i} is {}: audio must be finite numbers within +-{MAX_SAMPLE}",
            samples[i]
        ))),
    }
}

/// Resamples a whole mono clip from `from` Hz to `to` Hz; the output is time-aligned with
/// the input (the resampler's delay is trimmed) and `ceil(len * to / from)` samples long.
pub fn resample_clip(samples: &[f32], from: u32, to: u32) -> Result<Vec<f32>, HalError> {
    if from == 0 || to == 0 {
        return Err(HalError::Config(format!(
            "sample rates must be positive (got {from} Hz -> {to} Hz)"
        )));
    }
    check_finite(samples)?;
    if from == to || samples.is_empty() {
        return Ok(samples.to_vec());
    }
    let mut rs = Fft::<f32>::new(from as usize, to as usize, 1024, 1, FixedSync::Input)
        .map_err(rubato_err)?;
    let input = InterleavedSlice::new(samples, 1, samples.len()).map_err(rubato_err)?;
    let out = rs
        .process_all(&input, samples.len(), None)
        .map_err(rubato_err)?;
    Ok(out.take_data())
}

/// A streaming mono resampler: push any number of input samples, pull output samples.
///
/// Buffers are allocated once in [`StreamResampler::new`]; `push`/`pop` allocate nothing.
pub struct StreamResampler {
    inner: Option<Fft<f32>>,
    pending_in: Vec<f32>,
    pending_len: usize,
    out_block: Vec<f32>,
    ready: std::collections::VecDeque<f32>,
}

impl StreamResampler {
    /// A resampler from `from` Hz to `to` Hz. Equal rates give a pass-through.
    pub fn new(from: u32, to: u32) -> Result<Self, HalError> {
        if from == 0 || to == 0 {
            return Err(HalError::Config(format!(
                "sample rates must be positive (got {from} Hz -> {to} Hz)"
            )));
        }
        let (inner, block, out_max) = if from == to {
            (None, 0, 0)
        } else {
            let chunk = (from as usize * STREAM_BLOCK_MS / 1000).max(1);
            let rs = Fft::<f32>::new(from as usize, to as usize, chunk, 1, FixedSync::Input)
                .map_err(rubato_err)?;
            let block = rs.input_frames_max();
            let out_max = rs.output_frames_max();
            (Some(rs), block, out_max)
        };
        Ok(Self {
            inner,
            pending_in: vec![0.0; block],
            pending_len: 0,
            out_block: vec![0.0; out_max],
            // Room for a few 80 ms frames at up to 192 kHz before the deque must grow.
            ready: std::collections::VecDeque::with_capacity(4 * 192 * 80),
        })
    }

    /// The resampler's delay in output samples.
    pub fn delay(&self) -> usize {
        self.inner.as_ref().map_or(0, |r| r.output_delay())
    }

    /// Feeds input samples; the converted samples become available to [`Self::pop`].
    /// Non-finite samples are refused (nothing of `input` is taken).
    pub fn push(&mut self, mut input: &[f32]) -> Result<(), HalError> {
        check_finite(input)?;
        let Some(rs) = self.inner.as_mut() else {
            self.ready.extend(input.iter().copied());
            return Ok(());
        };
        while !input.is_empty() {
            let need = rs.input_frames_next() - self.pending_len;
            let take = need.min(input.len());
            self.pending_in[self.pending_len..self.pending_len + take]
                .copy_from_slice(&input[..take]);
            self.pending_len += take;
            input = &input[take..];
            if self.pending_len == rs.input_frames_next() {
                let n_in = self.pending_len;
                let src =
                    InterleavedSlice::new(&self.pending_in[..n_in], 1, n_in).map_err(rubato_err)?;
                let n_out_max = self.out_block.len();
                let mut dst = InterleavedSlice::new_mut(&mut self.out_block[..], 1, n_out_max)
                    .map_err(rubato_err)?;
                let (_, n_out) = rs
                    .process_into_buffer(&src, &mut dst, None)
                    .map_err(rubato_err)?;
                self.ready.extend(self.out_block[..n_out].iter().copied());
                self.pending_len = 0;
            }
        }
        Ok(())
    }

    /// Number of output samples ready.
    pub fn available(&self) -> usize {
        self.ready.len()
    }

    /// Moves `out.len()` ready samples into `out`; returns false (and moves nothing) when
    /// fewer are ready.
    pub fn pop(&mut self, out: &mut [f32]) -> bool {
        if self.ready.len() < out.len() {
            return false;
        }
        let n = out.len();
        for (o, s) in out.iter_mut().zip(self.ready.drain(..n)) {
            *o = s;
        }
        true
    }

    /// Drops all buffered audio and the filter state (after an xrun or a reopen).
    pub fn reset(&mut self) {
        if let Some(rs) = self.inner.as_mut() {
            rs.reset();
        }
        self.pending_len = 0;
        self.ready.clear();
    }
}
