//! Microphone and speaker for `moshid run`: moshid-hal's capture and playback streams
//! (ALSA PCMs, or `wav:/path` files), each on its own thread with a bounded queue and
//! reopen-with-backoff when a device goes away.

use crate::config::Config;
use crate::service::AudioFactory;
use crate::sound::{
    EchoCancel, EchoCancelFactory, EchoReference, InFrame, Sink, SoundError, Source,
};
use anyhow::Context;
use moshid_hal::{CaptureConfig, CaptureStream, Frame, PlaybackConfig, PlaybackStream};
use moshid_hal::{SampleFormat, FRAME_SAMPLES};
use std::time::{Duration, Instant};

/// Opens the configured devices through moshid-hal.
pub struct AlsaFactory;

fn format(cfg: &Config) -> anyhow::Result<SampleFormat> {
    cfg.audio
        .format
        .parse()
        .map_err(|e| anyhow::anyhow!("audio.format: {e}"))
}

impl AudioFactory for AlsaFactory {
    fn open(&self, cfg: &Config) -> anyhow::Result<(Box<dyn Source>, Box<dyn Sink>)> {
        let a = &cfg.audio;
        let mut c = CaptureConfig::new(&a.capture);
        c.rate = a.rate;
        c.channels = a.capture_channels as usize;
        c.format = format(cfg)?;
        c.mic_channels = a.mic_channels.iter().map(|&x| x as usize).collect();
        c.gain = a.mic_gain;
        c.pace = a.pace;
        // The pipeline skips frames itself; the stream only needs to absorb jitter.
        c.queue_frames = a.queue_frames.max(1) + 2;
        let capture = CaptureStream::start(&c).with_context(|| {
            format!("cannot open the microphone audio.capture = {:?}", a.capture)
        })?;

        let mut p = PlaybackConfig::new(&a.playback);
        p.rate = a.rate;
        p.channels = a.playback_channels as usize;
        p.format = c.format;
        p.pace = a.pace;
        p.queue_frames = a.queue_frames.max(1);
        let playback = PlaybackStream::start(&p).with_context(|| {
            format!("cannot open the speaker audio.playback = {:?}", a.playback)
        })?;
        let params = playback.params();
        let device_delay =
            Duration::from_secs_f64(params.buffer_frames as f64 / params.rate.max(1) as f64);
        Ok((
            Box::new(HalSource { stream: capture }),
            Box::new(HalSink {
                stream: Some(playback),
                device_delay,
                spare: None,
            }),
        ))
    }

    fn describe(&self, cfg: &Config) -> String {
        format!(
            "mic {:?}, speaker {:?}",
            cfg.audio.capture, cfg.audio.playback
        )
    }
}

struct HalSource {
    stream: CaptureStream,
}

impl Source for HalSource {
    fn recv(&mut self, timeout: Duration) -> Result<Option<InFrame>, SoundError> {
        match self.stream.recv(timeout) {
            Some(f) => Ok(Some(InFrame {
                samples: f.samples,
                captured_at: f.captured_at,
            })),
            None if self.stream.is_finished() => Err(SoundError::Ended),
            None => Ok(None),
        }
    }

    fn backlog(&self) -> usize {
        self.stream.stats().queue_depth
    }

    fn recycle(&mut self, frame: InFrame) {
        self.stream.recycle(Frame {
            samples: frame.samples,
            captured_at: frame.captured_at,
        });
    }
}

struct HalSink {
    stream: Option<PlaybackStream>,
    device_delay: Duration,
    /// Once the echo canceller reads the device reference, buffers come back here.
    spare: Option<crossbeam_channel::Receiver<Vec<f32>>>,
}

impl Sink for HalSink {
    fn play(&mut self, samples: &[f32]) -> Result<(), SoundError> {
        let Some(stream) = self.stream.as_ref() else {
            return Err(SoundError::Device("speaker already closed".into()));
        };
        // Reuse buffers: from the echo canceller when it reads the device reference, else
        // straight from the reference nobody reads. A fresh one only while they fill up.
        let reused = match &self.spare {
            Some(spare) => spare.try_recv().ok(),
            None => stream.reference().try_recv().ok().map(|f| f.samples),
        };
        let mut buf = match reused {
            Some(b) if b.len() == FRAME_SAMPLES => b,
            _ => vec![0.0; FRAME_SAMPLES],
        };
        buf.copy_from_slice(samples);
        let frame = Frame {
            samples: buf,
            captured_at: Instant::now(),
        };
        stream.send_blocking(frame).map_err(|_| {
            SoundError::Device(
                stream
                    .last_error()
                    .unwrap_or_else(|| "speaker stream stopped".into()),
            )
        })
    }

    fn echo_reference(&mut self) -> Option<EchoReference> {
        let stream = self.stream.as_ref()?;
        let (spare_tx, spare_rx) = crossbeam_channel::bounded(16);
        self.spare = Some(spare_rx);
        Some(EchoReference {
            frames: stream.reference().clone(),
            spare: spare_tx,
        })
    }

    fn delay(&self) -> Duration {
        // Queued frames plus the device buffer: audio written but not yet heard.
        let queued = self.stream.as_ref().map_or(0, |s| s.stats().queue_depth);
        Duration::from_millis(80 * queued as u64) + self.device_delay
    }

    fn finish(&mut self) -> Result<(), SoundError> {
        if let Some(s) = self.stream.take() {
            s.finish();
        }
        Ok(())
    }
}

/// hal's AEC3 canceller behind the pipeline's trait.
struct Aec {
    inner: moshid_hal::aec::EchoCanceller,
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
/// start with a clear message), built again on the inference thread.
pub fn load_aec(cfg: &Config) -> anyhow::Result<Option<EchoCancelFactory>> {
    if !cfg.aec.enabled {
        return Ok(None);
    }
    let opts = moshid_hal::aec::AecOptions::default();
    drop(
        moshid_hal::aec::EchoCanceller::new(&opts)
            .context("cannot start echo cancellation (set [aec] enabled = false to run without)")?,
    );
    Ok(Some(Box::new(move || {
        let inner = moshid_hal::aec::EchoCanceller::new(&opts).map_err(|e| e.to_string())?;
        Ok(Box::new(Aec {
            inner,
            failed: false,
        }) as Box<dyn EchoCancel>)
    })))
}
