//! Microphone and speaker for `moshid run`: ALSA devices through moshid-hal, or WAV
//! files named `wav:/path` (a looping file as microphone, a file collecting what would
//! be played; for tests and measurements without a sound card).

use crate::config::Config;
use crate::service::AudioFactory;
use crate::sound::{EchoCancel, EchoCancelFactory, Sink, Source};
use crate::wav_audio::{WavSink, WavSource};
use anyhow::Context;
use std::path::PathBuf;

/// Opens the configured devices.
pub struct AlsaFactory;

fn wav_path(name: &str) -> Option<PathBuf> {
    name.strip_prefix("wav:").map(PathBuf::from)
}

impl AudioFactory for AlsaFactory {
    fn open(&self, cfg: &Config) -> anyhow::Result<(Box<dyn Source>, Box<dyn Sink>)> {
        let source: Box<dyn Source> = match wav_path(&cfg.audio.capture) {
            Some(p) => {
                let s = moshid_hal::wav::read_mono_24k(&p)
                    .with_context(|| format!("audio.capture = {:?}", cfg.audio.capture))?;
                Box::new(WavSource::new(s, true).looped())
            }
            None => anyhow::bail!(
                "audio.capture = {:?}: ALSA capture is not integrated yet; use `wav:/path.wav`",
                cfg.audio.capture
            ),
        };
        let sink: Box<dyn Sink> = match wav_path(&cfg.audio.playback) {
            Some(p) => Box::new(WavSink::new(p, 24_000 * 60)),
            None => anyhow::bail!(
                "audio.playback = {:?}: ALSA playback is not integrated yet; use `wav:/path.wav`",
                cfg.audio.playback
            ),
        };
        Ok((source, sink))
    }
    fn describe(&self, cfg: &Config) -> String {
        format!(
            "mic {:?}, speaker {:?}",
            cfg.audio.capture, cfg.audio.playback
        )
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
