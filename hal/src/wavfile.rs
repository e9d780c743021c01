//! WAV file backend: offline runs and tests, with optional real-time pacing.

use crate::device::{CaptureDevice, DeviceError, DeviceParams, PlaybackDevice, SampleFormat};
use crate::HalError;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A WAV file's device parameters: f32 samples, read or written 10 ms at a time, with a
/// buffer of one period.
fn file_params(rate: u32, channels: usize) -> DeviceParams {
    let period_frames = (rate as usize / 100).max(1);
    DeviceParams {
        rate,
        channels,
        format: SampleFormat::F32,
        period_frames,
        buffer_frames: period_frames,
    }
}

/// Sleeps until `frames` frames at `rate` have had time to play since `start`.
fn pace(start: Instant, frames: u64, rate: u32) {
    let due = start + Duration::from_secs_f64(frames as f64 / rate as f64);
    let now = Instant::now();
    if due > now {
        std::thread::sleep(due - now);
    }
}

/// Reads a WAV file as a capture device; ends with [`DeviceError::EndOfStream`].
pub struct WavCapture {
    samples: Vec<f32>,
    pos: usize,
    params: DeviceParams,
    paced: Option<Instant>,
}

impl WavCapture {
    /// Loads the whole file; `paced` delivers it no faster than real time.
    pub fn open(path: &Path, paced: bool) -> Result<Self, HalError> {
        let (samples, channels, rate) = crate::wav::read_interleaved(path)?;
        Ok(Self {
            samples,
            pos: 0,
            params: file_params(rate, channels),
            paced: paced.then(Instant::now),
        })
    }
}

impl CaptureDevice for WavCapture {
    fn params(&self) -> &DeviceParams {
        &self.params
    }
    fn read(&mut self, buf: &mut [f32]) -> Result<usize, DeviceError> {
        let ch = self.params.channels;
        let n = (buf.len() / ch).min(self.params.period_frames) * ch;
        let n = n.min(self.samples.len() - self.pos);
        if n == 0 {
            return Err(DeviceError::EndOfStream);
        }
        buf[..n].copy_from_slice(&self.samples[self.pos..self.pos + n]);
        self.pos += n;
        if let Some(start) = self.paced {
            pace(start, (self.pos / ch) as u64, self.params.rate);
        }
        Ok(n / ch)
    }
    fn recover(&mut self) -> Result<(), DeviceError> {
        Ok(())
    }
}

/// Writes playback into a 32-bit float WAV file.
pub struct WavPlayback {
    writer: Option<hound::WavWriter<std::io::BufWriter<std::fs::File>>>,
    path: PathBuf,
    params: DeviceParams,
    paced: Option<(Instant, u64)>,
}

impl WavPlayback {
    /// Creates the file; `paced` consumes audio no faster than real time, like a sound card.
    pub fn create(path: &Path, rate: u32, channels: usize, paced: bool) -> Result<Self, HalError> {
        if channels == 0 || channels > u16::MAX as usize || rate == 0 {
            return Err(HalError::Config(format!(
                "{}: cannot write {channels} channels at {rate} Hz",
                path.display()
            )));
        }
        let spec = hound::WavSpec {
            channels: channels as u16,
            sample_rate: rate,
            bits_per_sample: 32,
            sample_format: hound::SampleFormat::Float,
        };
        let writer = hound::WavWriter::create(path, spec).map_err(|e| HalError::Wav {
            path: path.to_path_buf(),
            reason: format!("cannot create ({e}); check the directory exists and is writable"),
        })?;
        Ok(Self {
            writer: Some(writer),
            path: path.to_path_buf(),
            params: file_params(rate, channels),
            paced: paced.then(|| (Instant::now(), 0)),
        })
    }
}

impl PlaybackDevice for WavPlayback {
    fn params(&self) -> &DeviceParams {
        &self.params
    }
    fn write(&mut self, buf: &[f32]) -> Result<usize, DeviceError> {
        // Reopening would truncate what was written: a file's write error ends the stream.
        let failed = |e: hound::Error| {
            DeviceError::Failed(format!(
                "{}: cannot write ({e}); check that there is room and the path is writable",
                self.path.display()
            ))
        };
        let w = self
            .writer
            .as_mut()
            .ok_or_else(|| DeviceError::Failed("file closed".into()))?;
        let ch = self.params.channels;
        let n = buf.len() / ch * ch;
        for &s in &buf[..n] {
            w.write_sample(s).map_err(failed)?;
        }
        if let Some((start, done)) = self.paced.as_mut() {
            *done += (n / ch) as u64;
            pace(*start, *done, self.params.rate);
        }
        Ok(n / ch)
    }
    fn recover(&mut self) -> Result<(), DeviceError> {
        Ok(())
    }
    fn finish(&mut self) -> Result<(), DeviceError> {
        if let Some(w) = self.writer.take() {
            w.finalize().map_err(|e| {
                DeviceError::Failed(format!(
                    "{}: cannot complete the file ({e}); check that there is room and \
                         that it is a file (a WAV header is rewritten at the end)",
                    self.path.display()
                ))
            })?;
        }
        Ok(())
    }
}

impl Drop for WavPlayback {
    fn drop(&mut self) {
        let _ = self.finish();
    }
}
