//! SIGHUP: re-read the configuration and apply what changed, each part on its own. A part
//! that fails keeps what runs, says why (`error` topic, the state's `error`, STATUS); the
//! reload always ends with READY=1 (at once, or when the model load it started ends).

use super::{start_mqtt, Flow, Supervisor};
use crate::config::Config;
use std::time::Duration;

impl Supervisor {
    pub(super) fn on_reload(&mut self) -> Flow {
        self.notifier.reloading();
        self.ready_due = true;
        log::info!("SIGHUP: re-reading the configuration");
        let Some(path) = self.config_path.clone() else {
            log::info!("no configuration file to re-read");
            self.ready();
            return Flow::Continue;
        };
        let new = match Config::load(&path) {
            Ok(c) => c,
            Err(e) => {
                self.refuse(&format!("{e}; keeping the running configuration"));
                return Flow::Continue;
            }
        };
        if new.web != self.cfg.web {
            // Sessions hold sockets and the slot: a new endpoint waits for a restart.
            log::warn!("[web] changed: the web endpoint keeps its settings until a restart");
        }
        self.reload_mqtt(&new);
        self.reload_pipeline(new);
        Flow::Continue
    }

    /// A new MQTT connection replaces the old one only once it could be set up.
    fn reload_mqtt(&mut self, new: &Config) {
        if new.mqtt == self.cfg.mqtt && new.device_id == self.cfg.device_id {
            return;
        }
        match start_mqtt(new, &self.shared, &self.tx) {
            Ok(m) => {
                if let Some(old) = std::mem::replace(&mut self.mqtt, m) {
                    old.shutdown(Duration::from_millis(800));
                }
                self.cfg.mqtt = new.mqtt.clone();
                self.cfg.device_id = new.device_id.clone();
                let mut events = self.slot_base_events.clone();
                events.extend(self.mqtt.as_ref().map(crate::mqtt::Mqtt::events));
                self.slot.set_events(events);
                log::info!("MQTT settings applied");
            }
            Err(e) => self.refuse_part(&format!(
                "{e:#}; the MQTT settings were not applied, the running connection is kept"
            )),
        }
    }

    /// Model or audio changes: a new model loads next to the running one (READY=1 when it
    /// ends), or only the devices are reopened.
    fn reload_pipeline(&mut self, new: Config) {
        let model_changed = new.model != self.cfg.model
            || new.sampling != self.cfg.sampling
            || new.voices != self.cfg.voices
            || new.cache_dir != self.cfg.cache_dir;
        let audio_changed = new.audio != self.cfg.audio
            || new.aec != self.cfg.aec
            || new.idle_timeout_s != self.cfg.idle_timeout_s
            || new.wake != self.cfg.wake;
        self.cfg.autostart = new.autostart;
        if model_changed {
            // A voice switched over MQTT stays, unless the file names another one now.
            let voice = match self.slot.voice() {
                Some(v) if new.model.voice == self.cfg.model.voice => v.to_string(),
                _ => new.model.voice.clone(),
            };
            log::info!("model settings changed: loading");
            let mut cfg = new;
            cfg.mqtt = self.cfg.mqtt.clone();
            cfg.device_id = self.cfg.device_id.clone();
            self.request_load(cfg, voice, audio_changed);
        } else if audio_changed {
            self.restart_audio(new);
        } else {
            self.ready();
        }
    }

    /// Reopens the devices with the running model (the old devices if the new fail).
    fn restart_audio(&mut self, new: Config) {
        let before = self.cfg.audio.clone();
        let mut cfg = Config {
            mqtt: self.cfg.mqtt.clone(),
            device_id: self.cfg.device_id.clone(),
            ..new
        };
        match self.slot.reopen_audio(&mut cfg, &before) {
            Ok(()) => {
                self.cfg = cfg;
                self.slot.set_steady_phase();
            }
            Err(e) => {
                self.cfg = cfg;
                let _ = self.load_failed_audio(e);
                return;
            }
        }
        self.ready();
    }

    /// The whole reload is refused: say why, keep everything, READY=1.
    fn refuse(&mut self, msg: &str) {
        self.refuse_part(msg);
        self.ready();
    }

    /// One part of a reload is refused: say why where people look.
    fn refuse_part(&mut self, msg: &str) {
        log::error!("reload: {msg}");
        self.publish_error(msg);
        self.shared.set_warning(msg);
        self.shared.set_status(&format!("reload refused: {msg}"));
    }
}
