//! Microphone and speaker for `moshid run`: ALSA devices through moshid-hal, or WAV
//! files named `wav:/path` (a looping file as microphone, a file collecting what would
//! be played; for tests and measurements without a sound card).

use crate::config::Config;
use crate::service::AudioFactory;
use crate::sound::{EchoCancel, Sink, Source};
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

/// The echo canceller, when `[aec] enabled`.
pub fn load_aec(_cfg: &Config) -> anyhow::Result<Option<Box<dyn EchoCancel>>> {
    Ok(None)
}
