//! The model slot and the pipeline that holds it: which model runs (voice, memory), where
//! it is (in the pipeline, or parked while the audio devices are away), and the retry
//! schedule when nothing could start.

use super::loader::Running;
use crate::config::{AudioConfig, Config};
use crate::control::{Phase, Shared};
use crate::endpoint::Endpoint;
use crate::engine::Engine;
use crate::memory::Footprint;
use crate::pipeline::{retire_elsewhere, EventTx, Params, Pipeline};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

const FIRST_RETRY: Duration = Duration::from_secs(5);
const LAST_RETRY: Duration = Duration::from_secs(60);

pub(super) struct Slot {
    shared: Arc<Shared>,
    events: Vec<EventTx>,
    pipeline: Option<Pipeline>,
    /// A model waiting for audio devices (they failed to open, or went away).
    parked: Option<Box<dyn Engine>>,
    /// The loaded model's memory; None before the first load and after a release.
    footprint: Option<Footprint>,
    /// The voice that runs (kept after a release, to restore it if the next load fails).
    voice: Option<String>,
    retry_at: Option<Instant>,
    backoff: Duration,
}

impl Slot {
    pub fn new(shared: Arc<Shared>, events: Vec<EventTx>) -> Slot {
        Slot {
            shared,
            events,
            pipeline: None,
            parked: None,
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

    /// A model is loaded (running or parked).
    pub fn has_model(&self) -> bool {
        self.footprint.is_some()
    }

    /// Nothing ever loaded and the next load attempt is scheduled (the network or the
    /// hub is away): the supervisor waits by design, nothing is stalled.
    pub fn waiting_to_load(&self) -> bool {
        self.retry_at.is_some() && self.voice.is_none() && self.parked.is_none()
    }

    pub fn voice(&self) -> Option<&str> {
        self.voice.as_deref()
    }

    /// What a load may count on: the running model's size and a way to release it.
    pub fn running(&self) -> Running {
        Running {
            footprint: self.footprint,
            releaser: self.pipeline.as_ref().map(Pipeline::releaser),
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

    /// Puts a freshly loaded model to work: swapped into the running pipeline, or in a new
    /// one on (re)opened audio devices. `cfg.audio` falls back to `audio_before` when the
    /// new devices cannot be opened but the old ones can.
    pub fn install(
        &mut self,
        engine: Box<dyn Engine>,
        footprint: Footprint,
        voice: &str,
        reopen_audio: bool,
        cfg: &mut Config,
        audio_before: &AudioConfig,
    ) -> anyhow::Result<()> {
        self.footprint = Some(footprint);
        self.voice = Some(voice.to_string());
        // A model parked while the devices were away is superseded by this one.
        retire_elsewhere(self.parked.take());
        match &self.pipeline {
            Some(p) if !reopen_audio => {
                p.swap_engine(engine);
                Ok(())
            }
            _ => self.start_pipeline(engine, cfg, audio_before),
        }
    }

    /// (Re)starts the pipeline with `engine` on `cfg`'s devices, or on `fallback`'s.
    pub fn start_pipeline(
        &mut self,
        engine: Box<dyn Engine>,
        cfg: &mut Config,
        fallback: &AudioConfig,
    ) -> anyhow::Result<()> {
        if let Some(p) = self.pipeline.take() {
            // The devices must be free before they are opened again.
            retire_elsewhere(p.stop(Duration::from_secs(1)));
        }
        self.shared.set_status(&format!(
            "opening audio ({})",
            crate::audio::describe(&cfg.audio)
        ));
        let room = match crate::audio::open_room(&cfg.audio) {
            Ok(r) => r,
            Err(e) if fallback != &cfg.audio => match crate::audio::open_room(fallback) {
                Ok(r) => {
                    let msg = format!("{e:#}; kept the previous audio devices");
                    log::error!("{msg}");
                    self.shared.set_warning(&msg);
                    cfg.audio = fallback.clone();
                    r
                }
                Err(_) => return self.park(engine, e),
            },
            Err(e) => return self.park(engine, e),
        };
        let aec = match crate::audio::echo_canceller(&cfg.aec) {
            Ok(a) => a,
            Err(e) => return self.park(engine, e),
        };
        let params = Params {
            queue_frames: cfg.audio.queue_frames,
            idle_timeout: (cfg.idle_timeout_s > 0).then(|| Duration::from_secs(cfg.idle_timeout_s)),
            wake: self.wake_params(&cfg.wake),
            sounds: cfg.wake.enabled && cfg.wake.sounds,
        };
        let wake_word = params.wake.as_ref().map(|w| w.model.name.clone());
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

    /// The running (or parked) model, out of its pipeline, for new devices.
    pub fn take_engine(&mut self) -> Option<Box<dyn Engine>> {
        let from_pipeline = self
            .pipeline
            .take()
            .and_then(|p| p.stop(Duration::from_secs(1)));
        from_pipeline.or_else(|| self.parked.take())
    }

    fn park(&mut self, engine: Box<dyn Engine>, e: anyhow::Error) -> anyhow::Result<()> {
        self.parked = Some(engine);
        // No pipeline: nothing listens for the wake word.
        self.shared.set_wake_word(None);
        Err(e)
    }

    /// The phase for a running model: conversation or idle, per the switch.
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

    /// A due retry: a parked model gets its devices again here; without a model the
    /// caller loads one (the voice is returned).
    pub fn retry_due(&mut self, cfg: &mut Config) -> Option<String> {
        if self.retry_at.is_none_or(|t| Instant::now() < t) {
            return None;
        }
        self.retry_at = None;
        let Some(engine) = self.parked.take() else {
            return Some(
                self.voice
                    .clone()
                    .unwrap_or_else(|| cfg.model.voice.clone()),
            );
        };
        let audio = cfg.audio.clone();
        match self.start_pipeline(engine, cfg, &audio) {
            Ok(()) => {
                self.shared.clear_error();
                self.set_steady_phase();
                self.shared.set_status("ready: audio devices open again");
                self.reset_backoff();
            }
            Err(e) => {
                let wait = self.schedule_retry();
                let msg = format!("{e:#}");
                self.shared.set_error(&msg);
                self.shared
                    .set_status(&format!("error (retrying in {}s): {msg}", wait.as_secs()));
            }
        }
        None
    }

    pub fn pipeline_finished(&self) -> bool {
        self.pipeline.as_ref().is_some_and(Pipeline::is_finished)
    }

    /// The pipeline ended by itself (a device failed for good): park the model, retry.
    pub fn audio_stopped(&mut self) {
        if let Some(p) = self.pipeline.take() {
            self.parked = p.stop(Duration::from_millis(200));
        }
        self.shared.set_wake_word(None);
        if self.shared.phase() != Phase::Error {
            self.shared.set_error("audio pipeline stopped");
        }
        self.schedule_retry();
    }

    pub fn take_over(&mut self, ep: Endpoint) {
        match &self.pipeline {
            Some(p) => p.take_over(ep),
            None => log::warn!(endpoint = ep.name.as_str(); "no pipeline to take over"),
        }
    }

    pub fn give_back(&mut self) {
        if let Some(p) = &self.pipeline {
            p.give_back();
        }
    }

    /// Stops the pipeline; the model is dropped off this thread (the process is ending).
    pub fn stop(&mut self, timeout: Duration) {
        if let Some(p) = self.pipeline.take() {
            retire_elsewhere(p.stop(timeout));
        }
        retire_elsewhere(self.parked.take());
    }
}
