//! WAV files as microphone and speaker (the offline demo): the source releases one
//! 80 ms frame per 80 ms of wall time like a real microphone (or as fast as the model
//! takes them with `paced = false`), the sink collects what would have been played.

use crate::sound::{InFrame, Sink, SoundError, Source};
use moshid_hal::{FRAME_SAMPLES, MODEL_RATE};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// A WAV file played into the pipeline as if captured live.
pub struct WavSource {
    samples: Vec<f32>,
    next: usize,
    start: Option<Instant>,
    paced: bool,
}

impl WavSource {
    /// Wraps 24 kHz mono samples (padded to whole frames with silence).
    pub fn new(mut samples: Vec<f32>, paced: bool) -> WavSource {
        let frames = samples.len().div_ceil(FRAME_SAMPLES);
        samples.resize(frames * FRAME_SAMPLES, 0.0);
        WavSource {
            samples,
            next: 0,
            start: None,
            paced,
        }
    }

    fn sample_frame(&self, k: usize) -> &[f32] {
        &self.samples[k * FRAME_SAMPLES..(k + 1) * FRAME_SAMPLES]
    }

    fn frames(&self) -> usize {
        self.samples.len() / FRAME_SAMPLES
    }

    fn frame_start(&self, start: Instant, k: usize) -> Instant {
        start + Duration::from_micros(80_000 * k as u64)
    }
}

impl Source for WavSource {
    fn recv(&mut self, timeout: Duration) -> Result<Option<InFrame>, SoundError> {
        if self.next >= self.frames() {
            return Err(SoundError::Ended);
        }
        let start = *self.start.get_or_insert_with(Instant::now);
        let k = self.next;
        let captured_at = self.frame_start(start, k);
        if self.paced {
            // Frame k is complete once its last sample has "arrived".
            let due = self.frame_start(start, k + 1);
            let now = Instant::now();
            if due > now {
                let wait = due - now;
                if wait > timeout {
                    std::thread::sleep(timeout);
                    return Ok(None);
                }
                std::thread::sleep(wait);
            }
        }
        self.next += 1;
        Ok(Some(InFrame {
            samples: self.sample_frame(k).to_vec(),
            captured_at: if self.paced {
                captured_at
            } else {
                Instant::now()
            },
        }))
    }

    fn backlog(&self) -> usize {
        match (self.paced, self.start) {
            (true, Some(start)) => {
                let elapsed = start.elapsed().as_micros() as usize / 80_000;
                // Complete frames not yet taken, capped by what the file holds.
                elapsed.min(self.frames()).saturating_sub(self.next)
            }
            _ => 0,
        }
    }
}

/// Collects played audio and writes it as a 24 kHz mono WAV at the end.
pub struct WavSink {
    path: PathBuf,
    samples: Vec<f32>,
}

impl WavSink {
    /// Writes to `path` on finish.
    pub fn new(path: PathBuf, expected_samples: usize) -> WavSink {
        WavSink {
            path,
            samples: Vec::with_capacity(expected_samples),
        }
    }
}

impl Sink for WavSink {
    fn play(&mut self, samples: &[f32]) -> Result<(), SoundError> {
        self.samples.extend_from_slice(samples);
        Ok(())
    }

    fn finish(&mut self) -> Result<(), SoundError> {
        moshid_hal::wav::write_mono_f32(&self.path, &self.samples, MODEL_RATE)
            .map_err(|e| SoundError::Device(format!("{}: {e}", self.path.display())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paced_source_releases_frames_in_real_time() {
        let mut s = WavSource::new(vec![0.5; FRAME_SAMPLES * 3 - 10], true);
        let t0 = Instant::now();
        let mut n = 0;
        loop {
            match s.recv(Duration::from_millis(500)) {
                Ok(Some(f)) => {
                    assert_eq!(f.samples.len(), FRAME_SAMPLES);
                    n += 1;
                }
                Ok(None) => {}
                Err(SoundError::Ended) => break,
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(n, 3);
        // Three frames of 80 ms cannot all be complete before 240 ms.
        assert!(
            t0.elapsed() >= Duration::from_millis(235),
            "{:?}",
            t0.elapsed()
        );
    }
}
