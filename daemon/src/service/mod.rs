//! The supervisor: the one owner of the configuration, the model slot, the pipeline, the
//! MQTT client and systemd notification. Every input is an [`Event`] (`events.rs`) handled
//! by one method below; model loads run one at a time on the loader (`loader.rs`); the
//! room's audio and a remote endpoint meet in the pipeline (`endpoint.rs`).
//!
//! Promises: SIGTERM/SIGINT end within 2 s with the last state `stopped` and `offline`
//! published; SIGHUP re-reads the configuration and a reload that fails in any part keeps
//! what runs, says why on `error` and in STATUS, and ends with READY=1.

mod events;
mod loader;
mod persona;
mod reload;
mod slot;
mod web;

pub use events::Event;
pub use loader::EngineLoader;

use crate::config::Config;
use crate::control::{Command, Phase, Shared, StateSnapshot};
use crate::mqtt::{self, Mqtt};
use crate::notify::Notifier;
use crate::pipeline::EventTx;
use anyhow::Context;
use loader::{LoadDone, Loader, Outcome};
use slot::Slot;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How the service runs.
pub struct ServiceOptions {
    /// The configuration in force at start.
    pub config: Config,
    /// Where to re-read it on SIGHUP (None: SIGHUP only logs).
    pub config_path: Option<PathBuf>,
    /// Model engine.
    pub engine: EngineLoader,
    /// Exit once the source ends (file input: the demo).
    pub exit_when_source_ends: bool,
    /// More event receivers (the demo's transcript).
    pub extra_events: Vec<EventTx>,
}

/// What the run looked like, for the demo's report.
#[derive(Debug, Clone)]
pub struct Summary {
    /// Final state.
    pub state: StateSnapshot,
    /// Seconds from start to the first READY.
    pub load_s: f64,
    /// Model step times.
    pub steps: crate::control::Figures,
    /// End-to-end latencies.
    pub latency: crate::control::Figures,
}

/// What a handler wants next.
#[derive(Debug, PartialEq)]
enum Flow {
    Continue,
    Exit(Option<String>),
}

/// When the periodic duties last ran.
struct Timers {
    tick: Instant,
    figures: Instant,
    watchdog: Instant,
    status: String,
}

struct Supervisor {
    cfg: Config,
    config_path: Option<PathBuf>,
    shared: Arc<Shared>,
    notifier: Notifier,
    mqtt: Option<Mqtt>,
    slot: Slot,
    loader: Loader,
    tx: Sender<Event>,
    /// Where pipeline events go besides MQTT (the demo's transcript).
    slot_base_events: Vec<EventTx>,
    one_shot: bool,
    started: Instant,
    /// Seconds to the first READY=1.
    load_s: Option<f64>,
    /// A reload is being applied: READY=1 is due when it is done, whatever happens.
    ready_due: bool,
    timers: Timers,
    /// The web endpoint (it only sends events here).
    web: web::Web,
}

/// Runs until SIGTERM/SIGINT (or the end of a file source when asked).
pub fn run(opts: ServiceOptions) -> anyhow::Result<Summary> {
    let (tx, rx) = channel();
    let signals = events::spawn_signals(tx.clone())?;
    let mut s = Supervisor::new(opts, tx)?;
    s.start();
    let result = s.serve(&rx);
    s.shutdown();
    signals.close();
    match result {
        Some(e) => Err(anyhow::anyhow!(e)),
        None => Ok(s.summary()),
    }
}

impl Supervisor {
    fn new(opts: ServiceOptions, tx: Sender<Event>) -> anyhow::Result<Supervisor> {
        let cfg = opts.config;
        let shared = Arc::new(Shared::new(
            &cfg.model.voice,
            cfg.audio.volume,
            cfg.autostart,
        ));
        shared.set_persona(cfg.model.persona.as_deref());
        log::info!(device_id = cfg.device_id().as_str(); "moshid {} starting", env!("CARGO_PKG_VERSION"));
        let mqtt = start_mqtt(&cfg, &shared, &tx)?;
        let door = crate::hub::HubDoor::default();
        let web = web::Web::start(&cfg, &shared, &tx, &door);
        let mut base = opts.extra_events;
        base.extend(web.events());
        let mut extra = base.clone();
        extra.extend(mqtt.as_ref().map(Mqtt::events));
        Ok(Supervisor {
            slot_base_events: base,
            loader: Loader::new(opts.engine, shared.clone(), tx.clone()),
            slot: Slot::new(shared.clone(), extra, door),
            config_path: opts.config_path,
            notifier: Notifier::from_env(),
            one_shot: opts.exit_when_source_ends,
            started: Instant::now(),
            load_s: None,
            ready_due: false,
            timers: Timers {
                tick: Instant::now(),
                figures: Instant::now(),
                watchdog: Instant::now() - Duration::from_secs(3600),
                status: String::new(),
            },
            cfg,
            shared,
            mqtt,
            tx,
            web,
        })
    }

    /// Handles events until one asks to exit; returns the error that ended a one-shot run.
    fn serve(&mut self, rx: &Receiver<Event>) -> Option<String> {
        loop {
            let ev = match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(ev) => ev,
                Err(RecvTimeoutError::Timeout) => Event::Tick,
                Err(RecvTimeoutError::Disconnected) => Event::Stop,
            };
            let mut flow = self.handle(ev);
            // A stream of events must not starve the periodic duties.
            if flow == Flow::Continue && self.timers.tick.elapsed() >= Duration::from_millis(100) {
                flow = self.on_tick();
            }
            if let Flow::Exit(e) = flow {
                return e;
            }
        }
    }

    fn handle(&mut self, ev: Event) -> Flow {
        match ev {
            Event::Stop => Flow::Exit(None),
            Event::Reload => self.on_reload(),
            Event::Command(c) => self.on_command(c),
            Event::Loaded(done) => self.on_loaded(*done),
            Event::Fault(msg) => {
                self.publish_error(&msg);
                Flow::Continue
            }
            Event::RoomPersona(r) => {
                let (name, persona) = *r;
                self.on_room_persona(name, persona)
            }
            Event::Tick => self.on_tick(),
        }
    }

    fn start(&mut self) {
        self.request_load(self.cfg.clone(), self.cfg.model.voice.clone(), true);
    }

    fn request_load(&mut self, cfg: Config, voice: String, reopen_audio: bool) {
        self.shared.set_voice(&voice);
        self.shared.set_phase(Phase::Loading);
        let req = loader::LoadRequest {
            reopen_audio: reopen_audio || !self.slot.has_pipeline(),
            cfg,
            voice,
        };
        self.loader.request(req, self.slot.running());
    }

    /// `set/wake`: the switch the pipeline reads before listening. ON cannot start a wake
    /// word the configuration leaves off: that is said on `error`.
    fn switch_wake(&mut self, on: bool) {
        if on && !self.cfg.wake.enabled {
            let msg = "set/wake ON: the wake word is off in the configuration; \
                       set `[wake] enabled = true` and reload";
            log::warn!("{msg}");
            self.publish_error(msg);
        }
        self.shared.wake_on.store(on, Ordering::Relaxed);
    }

    fn on_command(&mut self, c: Command) -> Flow {
        let s = self.shared.clone();
        match c {
            // The room's conversation; web sessions are their clients' own.
            Command::Conversation(on) => s.conversation.store(on, Ordering::Relaxed),
            Command::Mute(on) => s.muted.store(on, Ordering::Relaxed),
            Command::Volume(v) => s.volume.store(v, Ordering::Relaxed),
            Command::Reset => s.reset_requested.store(true, Ordering::Relaxed),
            Command::Persona(p) => self.switch_persona(p),
            Command::Wake(on) => self.switch_wake(on),
            Command::Voice(v) => {
                if self.loader.busy() || self.slot.voice() != Some(v.as_str()) {
                    log::info!(voice = v.as_str(); "switching voice");
                    self.request_load(self.cfg.clone(), v, false);
                }
            }
        }
        s.revision.fetch_add(1, Ordering::Relaxed);
        Flow::Continue
    }

    fn on_loaded(&mut self, done: LoadDone) -> Flow {
        if !self
            .loader
            .finished(done.id, self.slot.running_after(done.released))
        {
            return Flow::Continue;
        }
        if done.released {
            self.slot.model_released();
        }
        match done.outcome {
            Outcome::Cancelled => Flow::Continue,
            Outcome::Failed(msg) => self.load_failed(done.request, msg),
            Outcome::Ready(engine, footprint, spec) => {
                self.web.model_loaded(&spec, &done.request.cfg);
                self.load_succeeded(done.request, engine, footprint)
            }
        }
    }

    fn load_succeeded(
        &mut self,
        req: loader::LoadRequest,
        engine: Box<dyn crate::engine::BatchModel>,
        footprint: crate::memory::Footprint,
    ) -> Flow {
        // The model part of the request becomes the running configuration; MQTT was
        // applied (or refused) by the reload itself.
        let mqtt = std::mem::take(&mut self.cfg.mqtt);
        let audio_before = self.cfg.audio.clone();
        self.cfg = Config { mqtt, ..req.cfg };
        let describe = engine.describe();
        let installed = self.slot.install(
            engine,
            footprint,
            &req.voice,
            req.reopen_audio,
            &mut self.cfg,
            &audio_before,
        );
        if let Err(e) = installed {
            return self.load_failed_audio(e);
        }
        self.shared.clear_error();
        self.slot.set_steady_phase();
        self.shared.set_status(&format!("ready: {describe}"));
        let load_s = *self
            .load_s
            .get_or_insert(self.started.elapsed().as_secs_f64());
        log::info!(load_s = load_s; "ready: {describe}");
        self.slot.reset_backoff();
        self.ready();
        self.keep_room_persona();
        Flow::Continue
    }

    /// A persona the room took with `set/persona` (other than `model.persona`, which the
    /// new model starts from anyway) is prepared again on the new model's weights.
    fn keep_room_persona(&mut self) {
        let room = self.shared.snapshot().persona;
        let Some(p) = room.filter(|p| self.cfg.model.persona.as_deref() != Some(p.as_str())) else {
            return;
        };
        match self.slot.personas() {
            Some(cache) => self.prepare_room_persona(cache, p),
            None => self.shared.set_persona(self.cfg.model.persona.as_deref()),
        }
    }

    fn load_failed(&mut self, req: loader::LoadRequest, msg: String) -> Flow {
        log::error!(voice = req.voice.as_str(); "cannot load the model: {msg}");
        self.publish_error(&msg);
        if self.one_shot && self.slot.voice().is_none() {
            // A one-shot run (the demo) reports the failure and ends.
            return Flow::Exit(Some(msg));
        }
        match self.slot.voice().map(str::to_string) {
            // Something still runs: it keeps running, with its voice.
            Some(v) if self.slot.has_model() => {
                self.shared.set_voice(&v);
                self.slot.set_steady_phase();
                self.shared.set_warning(&msg);
                self.shared.set_status(&format!(
                    "the new model did not load ({msg}); still running voice {v}"
                ));
            }
            // The running model was released for this one: bring it back.
            Some(v) => self.request_load(self.cfg.clone(), v, false),
            // Nothing ever started (network late, device missing): retry with backoff.
            None => {
                let wait = self.slot.schedule_retry();
                self.shared.set_error(&msg);
                self.shared
                    .set_status(&format!("error (retrying in {}s): {msg}", wait.as_secs()));
            }
        }
        self.ready();
        Flow::Continue
    }

    /// The model runs but the room's devices did not open: the web sessions are served,
    /// the devices retried.
    fn load_failed_audio(&mut self, e: anyhow::Error) -> Flow {
        let msg = format!("{e:#}");
        log::error!("cannot open audio: {msg}");
        if self.one_shot {
            return Flow::Exit(Some(msg));
        }
        self.publish_error(&msg);
        self.slot.audio_failed(&e);
        self.ready();
        Flow::Continue
    }

    /// READY=1 the first time the service serves, however it got there: a model whose
    /// audio opened only on a later retry (a microphone plugged in after the start) never
    /// passed through `load_succeeded`, and systemd kept the unit "activating".
    fn first_serve(&mut self) {
        let web = self.slot.has_model() && self.web.serving();
        if self.load_s.is_none() && (self.slot.has_pipeline() || web) {
            let load_s = self.started.elapsed().as_secs_f64();
            self.load_s = Some(load_s);
            let what = if self.slot.has_pipeline() {
                "the audio devices opened"
            } else {
                "the model answers web sessions (the room's devices are not open yet)"
            };
            log::info!(load_s = load_s; "serving: {what}");
            self.ready();
        }
    }

    /// READY=1 at the first start and at the end of every reload, whatever happened.
    fn ready(&mut self) {
        if self.ready_due || self.load_s.is_some() {
            self.notifier.ready(&self.status_line());
            self.ready_due = false;
        }
    }

    /// The `error` topic (and the log); the state carries it too.
    fn publish_error(&self, msg: &str) {
        // The room hears it too (`[wake] sounds`), where a pipeline runs to play it.
        self.slot.chime(moshid_models::wake::chime::Chime::Error);
        if let Some(m) = &self.mqtt {
            m.report_error(msg);
        }
    }

    fn on_tick(&mut self) -> Flow {
        self.timers.tick = Instant::now();
        if let Some(voice) = self.slot.retry_due(&mut self.cfg) {
            if !self.loader.busy() {
                self.request_load(self.cfg.clone(), voice, true);
            }
        }
        self.first_serve();
        if self.slot.pipeline_finished() {
            if self.one_shot {
                return Flow::Exit(None);
            }
            self.slot.audio_stopped();
        }
        self.refresh_figures();
        self.notify_status();
        Flow::Continue
    }

    /// The conversation's figures in STATUS every 5 s.
    fn refresh_figures(&mut self) {
        if self.timers.figures.elapsed() < Duration::from_secs(5) || self.loader.busy() {
            return;
        }
        self.timers.figures = Instant::now();
        let s = &self.shared;
        if s.phase() == Phase::Conversation {
            s.set_status(&format!(
                "conversation: latency {:.0} ms, RTF {:.2}, {} frames skipped",
                s.latency_ms(),
                s.rtf(),
                s.dropped_frames.load(Ordering::Relaxed)
            ));
        }
    }

    /// STATUS= on change; WATCHDOG=1 while the inference loop progresses, a load runs (a
    /// download cannot hang: every wait in it is bounded), or a first load waits for its
    /// retry (STATUS says why). Not while a running model or audio device is stalled.
    fn notify_status(&mut self) {
        let status = self.status_line();
        if status != self.timers.status {
            self.notifier.status(&status);
            self.timers.status = status;
        }
        if let Some(timeout) = self.notifier.watchdog_timeout() {
            let alive = self.loader.busy()
                || self.slot.waiting_to_load()
                || self.shared.since_beat().is_some_and(|d| d < timeout / 2);
            if alive && self.timers.watchdog.elapsed() >= timeout / 4 {
                self.notifier.watchdog();
                self.timers.watchdog = Instant::now();
            }
        }
    }

    /// STATUS=: the state's status line, and why the web endpoint does not serve (if so).
    fn status_line(&self) -> String {
        let status = self.shared.status();
        match self.shared.web_error() {
            Some(e) => format!("{status}; web endpoint off: {e}"),
            None => status,
        }
    }

    /// Web sessions and pipeline first (stop audio), then the last state and MQTT
    /// (`offline`), within 2 s.
    fn shutdown(&mut self) {
        log::info!("stopping");
        self.notifier.stopping();
        self.web.stop(Duration::from_millis(200));
        self.slot.stop(Duration::from_millis(700));
        self.shared.set_phase(Phase::Stopped);
        if let Some(m) = self.mqtt.take() {
            m.shutdown(Duration::from_millis(900));
        }
    }

    fn summary(&self) -> Summary {
        Summary {
            state: self.shared.snapshot(),
            load_s: self.load_s.unwrap_or(0.0),
            steps: self.shared.step_stats.figures(),
            latency: self.shared.latency_stats.figures(),
        }
    }
}

/// Connects MQTT when enabled; commands come back as [`Event::Command`].
fn start_mqtt(
    cfg: &Config,
    shared: &Arc<Shared>,
    tx: &Sender<Event>,
) -> anyhow::Result<Option<Mqtt>> {
    if !cfg.mqtt.enabled {
        return Ok(None);
    }
    let tx = std::sync::Mutex::new(tx.clone());
    let on_command: mqtt::CommandFn = Arc::new(move |cmd| {
        if let Ok(tx) = tx.lock() {
            let _ = tx.send(Event::Command(cmd));
        }
    });
    let voices: Vec<String> = cfg.voices.keys().cloned().collect();
    let personas: Vec<String> = cfg.personas.keys().cloned().collect();
    let m = mqtt::start(
        &cfg.mqtt,
        &cfg.device_id(),
        voices,
        personas,
        shared.clone(),
        on_command,
    )
    .context("cannot set up MQTT (fix the [mqtt] section of the config)")?;
    Ok(Some(m))
}
