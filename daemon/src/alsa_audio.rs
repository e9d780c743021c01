//! ALSA microphone and speaker for `moshid run`, through moshid-hal.

use crate::config::Config;
use crate::service::AudioFactory;
use crate::sound::{EchoCancel, Sink, Source};

/// Opens the configured ALSA devices.
pub struct AlsaFactory;

impl AudioFactory for AlsaFactory {
    fn open(&self, cfg: &Config) -> anyhow::Result<(Box<dyn Source>, Box<dyn Sink>)> {
        anyhow::bail!(
            "ALSA capture {:?} / playback {:?}: the hal's ALSA streams are not integrated yet",
            cfg.audio.capture,
            cfg.audio.playback
        )
    }
    fn describe(&self, cfg: &Config) -> String {
        format!(
            "ALSA mic {:?}, speaker {:?}",
            cfg.audio.capture, cfg.audio.playback
        )
    }
}

/// The echo canceller, when `[aec] enabled`.
pub fn load_aec(_cfg: &Config) -> anyhow::Result<Option<Box<dyn EchoCancel>>> {
    Ok(None)
}
