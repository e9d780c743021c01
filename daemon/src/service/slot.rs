//! The model and the room: the [`Hub`] that serves every conversation (the room's and the
//! web sessions'), the room's pipeline holding one of its conversations, which model runs
//! (voice, memory), and the retry schedule when something could not start.
//!
//! The room's devices and the model are apart on purpose: when the room's microphone goes
//! away the pipeline stops and is retried, while the hub keeps serving the web sessions.

use super::loader::{Releaser, Running};
use crate::config::{AudioConfig, Config};
use crate::control::{Phase, Shared};
use crate::engine::{BatchModel, JoinRequest, Persona};
use crate::hub::{Hub, HubDoor, Served, Timing};
use crate::memory::Footprint;
use crate::moshi_engine::PersonaCache;
use crate::pipeline::{EventTx, Params, Pipeline};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

const FIRST_RETRY: Duration = Duration::from_secs(5);
const LAST_RETRY: Duration = Duration::from_secs(60);

/// How long a replaced hub lives on: the room's pipeline takes its new conversation
/// between two frames, and web sessions move over at their next step.
const HUB_GRACE: Duration = Duration::from_secs(2);

pub(super) struct Slot {
    shared: Arc<Shared>,
    events: Vec<EventTx>,
    pipeline: Option<Pipeline>,
    /// The model, serving every conversation.
    hub: Option<Hub>,
    /// Where web sessions find the hub.
    door: HubDoor,
    /// The model's personas (None: it takes none).
    personas: Option<PersonaCache>,
    /// The room's persona (`set/persona`) on the running model; None: the model's own.
    room_persona: Option<Persona>,
    /// The loaded model's memory; None before the first load and after a release.
    footprint: Option<Footprint>,
    /// The voice that runs (kept after a release, to restore it if the next load fails).
    voice: Option<String>,
    retry_at: Option<Instant>,
    backoff: Duration,
}

impl Slot {
    pub fn new(shared: Arc<Shared>, events: Vec<EventTx>, door: HubDoor) -> Slot {
        Slot {
            shared,
            events,
            pipeline: None,
            hub: None,
            door,
            personas: None,
            room_persona: None,
            footprint: None,
            voice: None,
            retry_at: None,
            backoff: FIRST_RETRY,
        }
    }

    pub fn has_pipeline(&self) -> bool {
        self.pipeline.is_some()
    }

    /// Plays `c` on the room's speaker, where a pipeline runs (it knows `[wake] sounds`).
    pub fn chime(&self, c: moshid_models::wake::chime::Chime) {
        if let Some(p) = &self.pipeline {
            p.chime(c);
        }
    }

    /// A model is loaded (serving, whether or not the room's devices are open).
    pub fn has_model(&self) -> bool {
        self.footprint.is_some() && self.hub.is_some()
    }

    /// Nothing ever loaded and the next load attempt is scheduled (the network or the
    /// hub is away): the supervisor waits by design, nothing is stalled.
    pub fn waiting_to_load(&self) -> bool {
        self.retry_at.is_some() && self.voice.is_none() && self.hub.is_none()
    }

    pub fn voice(&self) -> Option<&str> {
        self.voice.as_deref()
    }

    /// What a load may count on: the running model's size and a way to release it.
    pub fn running(&self) -> Running {
        Running {
            footprint: self.footprint,
            releaser: self.hub.as_ref().map(|h| Releaser {
                room: self.pipeline.as_ref().map(Pipeline::releaser),
                hub: h.handle().clone(),
            }),
        }
    }

    /// Like [`Self::running`], once the model may have been released.
    pub fn running_after(&self, released: bool) -> Running {
        let mut r = self.running();
        if released {
            r.footprint = None;
        }
        r
    }

    pub fn model_released(&mut self) {
        self.footprint = None;
    }

    /// Where pipeline events go (after an MQTT change).
    pub fn set_events(&mut self, events: Vec<EventTx>) {
        self.events = events;
        if let Some(p) = &self.pipeline {
            p.set_events(self.events.clone());
        }
    }

    /// Puts a freshly loaded model to work: a new hub serves it (web sessions move to it
    /// at their next step), and the room's conversation on it is swapped into the running
    /// pipeline, or a new pipeline starts on (re)opened devices. `cfg.audio` falls back to
    /// `audio_before` when the new devices cannot be opened but the old ones can.
    pub fn install(
        &mut self,
        model: Box<dyn BatchModel>,
        footprint: Footprint,
        voice: &str,
        reopen_audio: bool,
        cfg: &mut Config,
        audio_before: &AudioConfig,
    ) -> anyhow::Result<()> {
        let personas = model.personas();
        let hub = Hub::start(model, Timing::realtime())?;
        log::info!(
            "serving {} conversation(s) at once: {}",
            hub.capacity(),
            hub.describe()
        );
        self.footprint = Some(footprint);
        self.voice = Some(voice.to_string());
        self.door.set(Some(Served {
            hub: hub.handle().clone(),
            personas: personas.clone(),
        }));
        self.personas = personas;
        // A persona's state belongs to the weights it was prompted on.
        self.room_persona = None;
        let old = self.hub.replace(hub);
        let result = match &self.pipeline {
            Some(p) if !reopen_audio => {
                let room = self.join_room()?;
                p.swap_engine(Box::new(room));
                Ok(())
            }
            _ => self.start_pipeline(cfg, audio_before),
        };
        retire_hub(old, HUB_GRACE);
        result
    }

    /// The room's conversation on the running hub.
    fn join_room(&self) -> anyhow::Result<crate::hub::HubConversation> {
        let hub = self
            .hub
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("no model is loaded"))?;
        let request = JoinRequest {
            persona: self.room_persona.clone(),
            ..JoinRequest::default()
        };
        hub.join(request)
            .map_err(|e| anyhow::anyhow!("the room cannot join the model: {e}"))
    }

    /// The model's personas (None: it takes none, or none is loaded).
    pub fn personas(&self) -> Option<PersonaCache> {
        self.personas.clone()
    }

    /// The room's conversation restarts with `persona` (None: the model's own); it keeps
    /// it when its devices are reopened, until the next model load.
    pub fn set_room_persona(&mut self, persona: Option<Persona>) -> anyhow::Result<()> {
        let before = std::mem::replace(&mut self.room_persona, persona);
        if let Some(p) = &self.pipeline {
            match self.join_room() {
                Ok(room) => p.swap_engine(Box::new(room)),
                Err(e) => {
                    self.room_persona = before;
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// (Re)starts the room's pipeline on `cfg`'s devices, or on `fallback`'s.
    pub fn start_pipeline(
        &mut self,
        cfg: &mut Config,
        fallback: &AudioConfig,
    ) -> anyhow::Result<()> {
        if let Some(p) = self.pipeline.take() {
            // The devices must be free before they are opened again.
            drop(p.stop(Duration::from_secs(1)));
        }
        self.shared.set_wake_word(None);
        self.shared.set_status(&format!(
            "opening audio ({})",
            crate::audio::describe(&cfg.audio)
        ));
        let room = match crate::audio::open_room(&cfg.audio) {
            Ok(r) => r,
            Err(e) if fallback != &cfg.audio => {
                // Say why the new devices failed, not only that the old ones were kept.
                let msg = format!("{e:#}; kept the previous audio devices");
                let r = crate::audio::open_room(fallback).map_err(|_| e)?;
                log::error!("{msg}");
                self.shared.set_warning(&msg);
                cfg.audio = fallback.clone();
                r
            }
            Err(e) => return Err(e),
        };
        let aec = crate::audio::echo_canceller(&cfg.aec)?;
        let params = Params {
            queue_frames: cfg.audio.queue_frames,
            idle_timeout: (cfg.idle_timeout_s > 0).then(|| Duration::from_secs(cfg.idle_timeout_s)),
            wake: self.wake_params(&cfg.wake),
            sounds: cfg.wake.enabled && cfg.wake.sounds,
        };
        let wake_word = params.wake.as_ref().map(|w| w.model.name.clone());
        let engine = Box::new(self.join_room()?);
        let p = Pipeline::start(
            engine,
            room,
            aec,
            self.shared.clone(),
            self.events.clone(),
            params,
        )?;
        self.pipeline = Some(p);
        self.shared.set_wake_word(wake_word.as_deref());
        Ok(())
    }

    /// `[wake]` with its model loaded; a model that does not load leaves the room without a
    /// wake word, said in the log and the state's warning.
    fn wake_params(&self, w: &crate::config::WakeConfig) -> Option<crate::pipeline::WakeParams> {
        if !w.enabled {
            return None;
        }
        match crate::cmd::wake::load_model(&w.model, w.json.as_deref()) {
            Ok(m) => {
                log::info!(model = m.name.as_str(); "listening for the wake word {:?}", m.config.wake_word);
                Some(crate::pipeline::WakeParams {
                    model: std::sync::Arc::new(m),
                    cutoff: w.sensitivity,
                })
            }
            Err(e) => {
                let msg = format!("wake word off: {e:#}");
                log::error!("{msg}");
                self.shared.set_warning(&msg);
                None
            }
        }
    }

    /// The room's phase while a model runs: conversation or idle, per the switch.
    pub fn set_steady_phase(&self) {
        if self.pipeline.is_some() && self.footprint.is_some() {
            let on = self.shared.conversation.load(Ordering::Relaxed);
            self.shared
                .set_phase(if on { Phase::Conversation } else { Phase::Idle });
        }
    }

    /// Schedules the next attempt (backoff 5 s doubling to 60 s); returns the wait.
    pub fn schedule_retry(&mut self) -> Duration {
        let wait = self.backoff;
        self.retry_at = Some(Instant::now() + wait);
        self.backoff = (self.backoff * 2).min(LAST_RETRY);
        wait
    }

    pub fn reset_backoff(&mut self) {
        self.backoff = FIRST_RETRY;
        self.retry_at = None;
    }

    /// A due retry: with a model, the room's devices are opened again here; without one
    /// the caller loads one (the voice is returned).
    pub fn retry_due(&mut self, cfg: &mut Config) -> Option<String> {
        if self.retry_at.is_none_or(|t| Instant::now() < t) {
            return None;
        }
        self.retry_at = None;
        if self.hub.is_none() {
            return Some(
                self.voice
                    .clone()
                    .unwrap_or_else(|| cfg.model.voice.clone()),
            );
        }
        let audio = cfg.audio.clone();
        match self.start_pipeline(cfg, &audio) {
            Ok(()) => {
                self.shared.clear_error();
                self.set_steady_phase();
                self.shared.set_status("ready: audio devices open again");
                self.reset_backoff();
            }
            Err(e) => {
                self.audio_failed(&e);
            }
        }
        None
    }

    /// The room's devices did not open: the model serves on (web sessions), the room's
    /// phase is `error` with the reason, and the devices are retried with backoff.
    pub fn audio_failed(&mut self, e: &anyhow::Error) -> Duration {
        let wait = self.schedule_retry();
        let msg = format!("{e:#}");
        self.shared.set_error(&msg);
        self.shared
            .set_status(&format!("error (retrying in {}s): {msg}", wait.as_secs()));
        wait
    }

    /// Reopens the room's devices (new audio settings) with the running model; without a
    /// model there is nothing to do (the devices open with the next load).
    pub fn reopen_audio(&mut self, cfg: &mut Config, fallback: &AudioConfig) -> anyhow::Result<()> {
        if self.hub.is_none() {
            return Ok(());
        }
        self.start_pipeline(cfg, fallback)
    }

    pub fn pipeline_finished(&self) -> bool {
        self.pipeline.as_ref().is_some_and(Pipeline::is_finished)
    }

    /// The pipeline ended by itself (a device failed for good): the room's conversation
    /// ends, the model serves on, the devices are retried.
    pub fn audio_stopped(&mut self) {
        if let Some(p) = self.pipeline.take() {
            drop(p.stop(Duration::from_millis(200)));
        }
        self.shared.set_wake_word(None);
        if self.shared.phase() != Phase::Error {
            self.shared
                .set_error("the room's audio stopped (web sessions go on)");
        }
        self.schedule_retry();
    }

    /// Stops the pipeline and the model; the model is freed off this thread (the process
    /// is ending).
    pub fn stop(&mut self, timeout: Duration) {
        if let Some(p) = self.pipeline.take() {
            drop(p.stop(timeout));
        }
        self.door.set(None);
        retire_hub(self.hub.take(), Duration::ZERO);
    }
}

/// Stops a hub (and frees its model) on a short-lived thread, after `grace`.
fn retire_hub(hub: Option<Hub>, grace: Duration) {
    if let Some(h) = hub {
        let _ = std::thread::Builder::new()
            .name("moshid-reaper".into())
            .spawn(move || {
                std::thread::sleep(grace);
                drop(h);
            });
    }
}
