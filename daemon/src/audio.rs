//! The room's microphone and speaker: moshid-hal's capture and playback streams (ALSA PCMs,
//! or `wav:/path` files through hal's WAV device), each on its own thread with a bounded
//! queue and reopen-with-backoff when a device goes away. The pipeline's [`Source`] and
//! [`Sink`] are implemented directly on them, and the echo canceller is configured here
//! the same way as in `moshid audio passthrough` (`AecOptions::for_playback`).

use crate::config::{AecConfig, AudioConfig};
use crate::endpoint::Endpoint;
use crate::sound::{
    EchoCancel, EchoCancelFactory, EchoReference, InFrame, Sink, SoundError, Source,
};
use anyhow::Context;
use moshid_hal::aec::{AecOptions, EchoCanceller};
use moshid_hal::{CaptureConfig, CaptureStream, Frame, PlaybackConfig, PlaybackStream};
use std::time::{Duration, Instant};

/// Opens the room's microphone and speaker as configured.
pub fn open_room(a: &AudioConfig) -> anyhow::Result<Endpoint> {
    let mut c = CaptureConfig::new(&a.capture);
    c.rate = a.rate;
    c.channels = a.capture_channels as usize;
    c.format = a.format;
    c.mic_channels = a.mic_channels.iter().map(|&x| x as usize).collect();
    c.gain = a.mic_gain;
    c.pace = a.pace;
    // The pipeline skips frames itself; the stream only needs to absorb jitter.
    c.queue_frames = a.queue_frames.max(1) + 2;
    let capture = CaptureStream::start(&c)
        .with_context(|| format!("cannot open the microphone audio.capture = {:?}", a.capture))?;

    let mut p = PlaybackConfig::new(&a.playback);
    p.rate = a.rate;
    p.channels = a.playback_channels as usize;
    p.format = a.format;
    p.pace = a.pace;
    p.queue_frames = a.queue_frames.max(1);
    let playback = PlaybackStream::start(&p)
        .with_context(|| format!("cannot open the speaker audio.playback = {:?}", a.playback))?;
    Ok(Endpoint::room(Box::new(capture), Box::new(playback)))
}

/// Describes the room's devices for STATUS.
pub fn describe(a: &AudioConfig) -> String {
    format!("mic {:?}, speaker {:?}", a.capture, a.playback)
}

impl Source for CaptureStream {
    fn recv(&mut self, timeout: Duration) -> Result<Option<InFrame>, SoundError> {
        match CaptureStream::recv(self, timeout) {
            Some(f) => Ok(Some(InFrame {
                samples: f.samples,
                captured_at: f.captured_at,
            })),
            None if self.is_finished() => Err(SoundError::Ended),
            None => Ok(None),
        }
    }

    fn backlog(&self) -> usize {
        self.stats().queue_depth
    }

    fn is_batch(&self) -> bool {
        CaptureStream::is_batch(self)
    }

    fn recycle(&mut self, frame: InFrame) {
        CaptureStream::recycle(
            self,
            Frame {
                samples: frame.samples,
                captured_at: frame.captured_at,
            },
        );
    }
}

impl Sink for PlaybackStream {
    fn play(&mut self, samples: &[f32]) -> Result<(), SoundError> {
        let mut buf = self.buffer();
        if buf.len() != samples.len() {
            return Err(SoundError::Device(format!(
                "speaker frames are {} samples, got {}",
                buf.len(),
                samples.len()
            )));
        }
        buf.copy_from_slice(samples);
        let frame = Frame {
            samples: buf,
            captured_at: Instant::now(),
        };
        self.send_blocking(frame).map_err(|_| {
            SoundError::Device(
                self.last_error()
                    .unwrap_or_else(|| "speaker stream stopped".into()),
            )
        })
    }

    fn echo_reference(&mut self) -> Option<EchoReference> {
        Some(EchoReference {
            frames: self.reference().clone(),
            spare: self.recycler(),
            playback: Some(self.params().clone()),
        })
    }

    fn delay(&self) -> Duration {
        // Queued frames plus the device buffer: audio written but not yet heard.
        Duration::from_millis(80 * self.stats().queue_depth as u64) + self.device_delay()
    }

    fn finish(&mut self) -> Result<(), SoundError> {
        self.close().map_err(|e| SoundError::Device(e.to_string()))
    }
}

/// hal's AEC3 canceller behind the pipeline's trait.
struct Aec {
    inner: EchoCanceller,
    failed: bool,
}

impl EchoCancel for Aec {
    fn process(&mut self, far: &[f32], near: &mut [f32]) {
        // A failing canceller must not stop the conversation: pass the mic through.
        if let Err(e) = self.inner.process(far, near) {
            if !self.failed {
                log::warn!("echo cancellation failed, passing the microphone through: {e}");
                self.failed = true;
            }
        }
    }
}

/// The echo canceller, when `[aec] enabled`: checked here (so a bad setup fails the
/// start with a clear message), built again on the inference thread for the speaker it
/// is given.
pub fn echo_canceller(cfg: &AecConfig) -> anyhow::Result<Option<EchoCancelFactory>> {
    if !cfg.enabled {
        return Ok(None);
    }
    drop(
        EchoCanceller::new(&AecOptions::default())
            .context("cannot start echo cancellation (set [aec] enabled = false to run without)")?,
    );
    Ok(Some(Box::new(move |playback| {
        let opts = match playback {
            Some(p) => AecOptions::for_playback(p, false, false),
            None => AecOptions::default(),
        };
        let inner = EchoCanceller::new(&opts).map_err(|e| e.to_string())?;
        Ok(Box::new(Aec {
            inner,
            failed: false,
        }) as Box<dyn EchoCancel>)
    })))
}
