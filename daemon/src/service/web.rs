//! The web endpoint as the supervisor runs it: started next to MQTT, stopped first at
//! shutdown. Its sessions join the supervisor's model through the hub's door (each a
//! conversation beside the room's); controls are `Command` events to the supervisor. A server that cannot start (the port is taken, the state directory
//! is not writable) is logged and shown in the state (`web_error`) and STATUS; the rest
//! of the daemon runs without it.

use super::Event;
use crate::config::Config;
use crate::control::Shared;
use crate::hub::HubDoor;
use crate::model_spec::ModelSpec;
use crate::pipeline::EventTx;
use crate::web::backend::ModelInfo;
use crate::web::remote::SupervisorBackend;
use crate::web::server::WebServer;
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The running web endpoint, if any.
pub(super) struct Web {
    server: Option<WebServer>,
    /// The room's transcript and wake count for the kiosk screen (`/api/room`).
    room_events: Option<EventTx>,
    /// What the metadata message reports (the loaded model's files, the sampling).
    info: Arc<Mutex<ModelInfo>>,
}

impl Web {
    /// Starts `[web]` when enabled; a failure is logged and recorded, never fatal.
    pub fn start(cfg: &Config, shared: &Arc<Shared>, tx: &Sender<Event>, door: &HubDoor) -> Web {
        let mut web = Web {
            server: None,
            room_events: None,
            info: Arc::new(Mutex::new(ModelInfo::default())),
        };
        if !cfg.web.enabled {
            return web;
        }
        web.set_sampling(cfg);
        let voices = cfg.voices.keys().cloned().collect();
        let backend = SupervisorBackend::new(
            tx.clone(),
            shared.clone(),
            web.info.clone(),
            voices,
            door.clone(),
            cfg.web.max_conversations,
        );
        match WebServer::start(cfg.web.clone(), Arc::new(backend)) {
            Ok(server) => {
                web.server = Some(server);
                web.room_events = crate::room::spawn_recorder(shared.clone())
                    .map_err(|e| log::error!("kiosk screen without transcript: {e}"))
                    .ok();
                shared.set_web_error(None);
            }
            Err(e) => {
                let msg = format!("{e:#}");
                log::error!("web endpoint not started (the rest runs): {msg}");
                shared.set_web_error(Some(&msg));
            }
        }
        web
    }

    /// Where the room's pipeline sends its transcript for the kiosk screen.
    pub fn events(&self) -> Vec<EventTx> {
        self.room_events.iter().cloned().collect()
    }

    /// True while the endpoint listens.
    pub fn serving(&self) -> bool {
        self.server.is_some()
    }

    fn set_sampling(&self, cfg: &Config) {
        if let Ok(mut i) = self.info.lock() {
            let s = &cfg.sampling;
            i.text_temperature = s.temp_text;
            i.text_topk = s.top_k;
            i.audio_temperature = s.temp_audio;
            i.audio_topk = s.top_k;
        }
    }

    /// A model was loaded: the metadata names its files and sampling from now on.
    pub fn model_loaded(&self, spec: &ModelSpec, cfg: &Config) {
        let name = |p: &std::path::Path| {
            p.file_name()
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_default()
        };
        self.set_sampling(cfg);
        if let Ok(mut i) = self.info.lock() {
            i.lm_file = name(&spec.lm);
            i.mimi_file = name(&spec.mimi);
        }
    }

    /// Ends every connection (their sessions give the conversation back) and stops.
    pub fn stop(&mut self, timeout: Duration) {
        if let Some(s) = self.server.take() {
            s.stop(timeout);
        }
    }
}
