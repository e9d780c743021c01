//! The supervisor: loads models and audio on a loader thread, runs the pipeline, serves
//! MQTT, talks to systemd (READY, STATUS, WATCHDOG, STOPPING, RELOADING) and handles
//! SIGTERM/SIGINT (clean exit within 2 s) and SIGHUP (re-read the configuration).

use crate::config::Config;
use crate::control::{Command, Phase, Shared};
use crate::engine::Engine;
use crate::mqtt::{self, Mqtt};
use crate::notify::Notifier;
use crate::pipeline::{EventTx, Params, Pipeline};
use crate::sound::{EchoCancelFactory, Sink, Source};
use crate::store::{self, ModelFiles};
use anyhow::Context;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Opens the audio endpoints for a configuration.
pub trait AudioFactory: Send + Sync {
    /// Opens the microphone and the speaker.
    fn open(&self, cfg: &Config) -> anyhow::Result<(Box<dyn Source>, Box<dyn Sink>)>;
    /// Describes the endpoints for STATUS.
    fn describe(&self, cfg: &Config) -> String;
}

/// Builds the model engine from resolved files.
pub type EngineLoader = fn(files: &ModelFiles, cfg: &Config) -> anyhow::Result<Box<dyn Engine>>;

/// Builds the echo canceller, if enabled.
pub type AecLoader = fn(cfg: &Config) -> anyhow::Result<Option<EchoCancelFactory>>;

/// How the service runs.
pub struct ServiceOptions {
    /// The configuration in force at start.
    pub config: Config,
    /// Where to re-read it on SIGHUP (None: SIGHUP only logs).
    pub config_path: Option<PathBuf>,
    /// Audio endpoints.
    pub audio: Box<dyn AudioFactory>,
    /// Model engine.
    pub engine: EngineLoader,
    /// Echo canceller.
    pub aec: AecLoader,
    /// Exit once the source ends (file input: the demo).
    pub exit_when_source_ends: bool,
    /// More event receivers (the demo's transcript).
    pub extra_events: Vec<EventTx>,
}

/// What the run looked like, for the demo's report.
#[derive(Debug, Clone)]
pub struct Summary {
    /// Final state.
    pub state: crate::control::StateSnapshot,
    /// Seconds from start to the first READY.
    pub load_s: f64,
    /// Model step times.
    pub steps: crate::control::Figures,
    /// End-to-end latencies.
    pub latency: crate::control::Figures,
}

enum Msg {
    Signal(i32),
    Voice(String),
    Loaded(u64, anyhow::Result<Loaded>),
}

/// Opened microphone, speaker and echo canceller.
type Audio = (Box<dyn Source>, Box<dyn Sink>, Option<EchoCancelFactory>);

struct Loaded {
    engine: Box<dyn Engine>,
    /// Freshly opened audio; None when only the model was reloaded (voice switch).
    audio: Option<Audio>,
    describe: String,
}

fn spawn_signals(tx: Sender<Msg>) -> anyhow::Result<signal_hook::iterator::Handle> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP])
        .context("cannot install signal handlers")?;
    let handle = signals.handle();
    std::thread::Builder::new()
        .name("moshid-signals".into())
        .spawn(move || {
            for s in signals.forever() {
                if tx.send(Msg::Signal(s)).is_err() {
                    break;
                }
            }
        })
        .context("cannot start the signal thread")?;
    Ok(handle)
}

/// What every load needs besides the configuration.
#[derive(Clone)]
struct Loader {
    shared: Arc<Shared>,
    audio: Arc<dyn AudioFactory>,
    engine: EngineLoader,
    aec: AecLoader,
    tx: Sender<Msg>,
}

/// Starts a loader thread: resolve (download) files, load the engine, open audio unless
/// the running pipeline keeps its devices (`open_audio = false`).
fn spawn_loader(generation: u64, cfg: Config, voice: String, open_audio: bool, l: &Loader) {
    let Loader {
        shared,
        audio,
        engine,
        aec,
        tx,
    } = l.clone();
    let spawned = std::thread::Builder::new()
        .name("moshid-loader".into())
        .spawn(move || {
            let result = (|| -> anyhow::Result<Loaded> {
                shared.set_status(&format!("locating model files for voice {voice}"));
                let mut last = Instant::now() - Duration::from_secs(1);
                let files = store::resolve(&cfg, &voice, &mut |file, done, total| {
                    // Progress counts as liveness while a large file downloads.
                    shared.beat();
                    if last.elapsed() >= Duration::from_millis(500) || done == total {
                        last = Instant::now();
                        let pct = if total > 0 {
                            done as f32 * 100.0 / total as f32
                        } else {
                            0.0
                        };
                        shared.set_download(Some((pct * 10.0).round() / 10.0));
                        shared.set_status(&format!(
                            "downloading {file}: {:.1}% of {:.2} GB",
                            pct,
                            total as f64 / 1e9
                        ));
                    }
                })?;
                shared.set_download(None);
                shared.set_status(&format!("loading model ({})", files.lm.display()));
                let engine = engine(&files, &cfg)?;
                let audio = if open_audio {
                    shared.set_status(&format!("opening audio ({})", audio.describe(&cfg)));
                    let (source, sink) = audio.open(&cfg)?;
                    Some((source, sink, aec(&cfg)?))
                } else {
                    None
                };
                Ok(Loaded {
                    describe: engine.describe(),
                    engine,
                    audio,
                })
            })();
            let _ = tx.send(Msg::Loaded(generation, result));
        });
    if let Err(e) = spawned {
        log::error!("cannot start the loader thread: {e}");
    }
}

/// Runs until SIGTERM/SIGINT (or the end of a file source when asked).
pub fn run(opts: ServiceOptions) -> anyhow::Result<Summary> {
    let started = Instant::now();
    let notifier = Notifier::from_env();
    let mut cfg = opts.config;
    let (tx, rx): (Sender<Msg>, Receiver<Msg>) = channel();
    let signals = spawn_signals(tx.clone())?;
    let voice0 = cfg.model.voice.clone();
    let shared = Arc::new(Shared::new(&voice0, cfg.audio.volume, cfg.autostart));
    let audio: Arc<dyn AudioFactory> = Arc::from(opts.audio);
    let device_id = cfg.device_id();
    log::info!(device_id = device_id.as_str(); "moshid {} starting", env!("CARGO_PKG_VERSION"));

    let mut mqtt = start_mqtt(&cfg, &device_id, &shared, &tx)?;
    let loader = Loader {
        shared: shared.clone(),
        audio: audio.clone(),
        engine: opts.engine,
        aec: opts.aec,
        tx: tx.clone(),
    };
    let mut generation = 1u64;
    let mut loading = true;
    let mut ready_sent = false;
    let mut load_s = 0.0;
    spawn_loader(generation, cfg.clone(), shared.voice(), true, &loader);
    let mut pipeline: Option<Pipeline> = None;
    let mut retry_at: Option<Instant> = None;
    let mut retry_backoff = Duration::from_secs(5);
    let mut last_status = String::new();
    let mut last_watchdog = Instant::now() - Duration::from_secs(3600);
    let mut last_figures = Instant::now();
    let events_for = |mqtt: &Option<Mqtt>| {
        let mut ev = opts.extra_events.clone();
        if let Some(m) = mqtt {
            ev.push(m.events());
        }
        ev
    };

    loop {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(Msg::Signal(sig)) if sig == signal_hook::consts::SIGHUP => {
                notifier.reloading();
                log::info!("SIGHUP: re-reading the configuration");
                match opts.config_path.as_ref().map(|p| Config::load(p)) {
                    None => log::info!("no configuration file to re-read"),
                    Some(Err(e)) => {
                        log::error!("{e}; keeping the running configuration");
                    }
                    Some(Ok(new)) => {
                        let mqtt_changed = new.mqtt != cfg.mqtt || new.device_id != cfg.device_id;
                        let mut pipeline_cfg = new.clone();
                        pipeline_cfg.mqtt = cfg.mqtt.clone();
                        let pipeline_changed = pipeline_cfg != cfg;
                        cfg = new;
                        if mqtt_changed {
                            if let Some(m) = mqtt.take() {
                                m.shutdown(Duration::from_millis(800));
                            }
                            mqtt = start_mqtt(&cfg, &cfg.device_id(), &shared, &tx)?;
                        }
                        if pipeline_changed {
                            log::info!("model/audio settings changed: reloading");
                            if let Some(p) = pipeline.take() {
                                p.stop(Duration::from_secs(1));
                            }
                            shared.set_phase(Phase::Loading);
                            shared.set_voice(&cfg.model.voice);
                            retry_at = None;
                            generation += 1;
                            loading = true;
                            spawn_loader(
                                generation,
                                cfg.clone(),
                                shared.voice(),
                                pipeline.is_none(),
                                &loader,
                            );
                        }
                    }
                }
                if !loading {
                    notifier.ready(&shared.status());
                }
            }
            Ok(Msg::Signal(_)) => {
                log::info!("stopping");
                notifier.stopping();
                break;
            }
            Ok(Msg::Voice(v)) => {
                if v == shared.voice() && !loading {
                    continue;
                }
                log::info!(voice = v.as_str(); "switching voice");
                // The devices stay open; the current voice goes on until the new
                // model is ready and swapped in.
                shared.set_voice(&v);
                shared.set_phase(Phase::Loading);
                retry_at = None;
                generation += 1;
                loading = true;
                spawn_loader(generation, cfg.clone(), v, pipeline.is_none(), &loader);
            }
            Ok(Msg::Loaded(g, _)) if g != generation => {} // superseded by a newer load
            Ok(Msg::Loaded(_, Err(e))) => {
                let msg = format!("{e:#}");
                shared.set_error(&msg);
                if !opts.exit_when_source_ends {
                    // Networks come up late and devices get plugged in: try again, with
                    // backoff, staying visible over MQTT meanwhile.
                    log::error!(
                        "cannot start: {msg}; retrying in {}s",
                        retry_backoff.as_secs()
                    );
                    shared.set_status(&format!(
                        "error (retrying in {}s): {msg}",
                        retry_backoff.as_secs()
                    ));
                    retry_at = Some(Instant::now() + retry_backoff);
                    retry_backoff = (retry_backoff * 2).min(Duration::from_secs(60));
                    continue;
                }
                // A one-shot run (the demo) reports the failure and ends.
                log::error!("cannot start: {msg}");
                if let Some(m) = mqtt.take() {
                    m.shutdown(Duration::from_millis(800));
                }
                signals.close();
                return Err(e);
            }
            Ok(Msg::Loaded(_, Ok(l))) => {
                loading = false;
                retry_backoff = Duration::from_secs(5);
                shared.clear_error();
                match (l.audio, pipeline.as_ref()) {
                    (None, Some(p)) => p.swap_engine(l.engine),
                    (Some((source, sink, aec)), _) => {
                        if let Some(p) = pipeline.take() {
                            p.stop(Duration::from_secs(1));
                        }
                        let started_pipeline = Pipeline::start(
                            l.engine,
                            source,
                            sink,
                            aec,
                            shared.clone(),
                            events_for(&mqtt),
                            Params {
                                queue_frames: cfg.audio.queue_frames,
                                idle_timeout: (cfg.idle_timeout_s > 0)
                                    .then(|| Duration::from_secs(cfg.idle_timeout_s)),
                            },
                        );
                        match started_pipeline {
                            Ok(p) => pipeline = Some(p),
                            Err(e) => {
                                shared.set_error(&format!("cannot start pipeline threads: {e}"));
                                continue;
                            }
                        }
                    }
                    (None, None) => {
                        // The pipeline went away while the model loaded: open audio too.
                        loading = true;
                        generation += 1;
                        spawn_loader(generation, cfg.clone(), shared.voice(), true, &loader);
                        continue;
                    }
                }
                let conv = shared.conversation.load(Ordering::Relaxed);
                shared.set_phase(if conv {
                    Phase::Conversation
                } else {
                    Phase::Idle
                });
                shared.set_status(&format!("ready: {}", l.describe));
                if !ready_sent {
                    load_s = started.elapsed().as_secs_f64();
                }
                log::info!(load_s = load_s; "ready: {}", l.describe);
                notifier.ready(&shared.status());
                ready_sent = true;
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
        }

        // Periodic duties.
        if retry_at.is_some_and(|t| Instant::now() >= t) {
            retry_at = None;
            shared.set_phase(Phase::Loading);
            spawn_loader(
                generation,
                cfg.clone(),
                shared.voice(),
                pipeline.is_none(),
                &loader,
            );
        }
        if pipeline.as_ref().is_some_and(|p| p.is_finished()) {
            if opts.exit_when_source_ends {
                break;
            }
            if shared.phase() != Phase::Error {
                shared.set_error("audio pipeline stopped");
            }
        }
        if ready_sent && !loading && last_figures.elapsed() >= Duration::from_secs(5) {
            last_figures = Instant::now();
            if shared.phase() == Phase::Conversation {
                shared.set_status(&format!(
                    "conversation: latency {:.0} ms, RTF {:.2}, {} frames skipped",
                    shared.latency_ms(),
                    shared.rtf(),
                    shared.dropped_frames.load(Ordering::Relaxed)
                ));
            } else if shared.phase() == Phase::Idle {
                shared.set_status("idle: waiting for a conversation");
            }
        }
        let status = shared.status();
        if status != last_status {
            notifier.status(&status);
            last_status = status;
        }
        if let Some(timeout) = notifier.watchdog_timeout() {
            // Only vouch for liveness when the inference loop (or a download) made
            // progress recently; while loading, the loader thread is the heartbeat.
            let alive = loading || shared.since_beat().is_some_and(|d| d < timeout / 2);
            if alive && last_watchdog.elapsed() >= timeout / 4 {
                notifier.watchdog();
                last_watchdog = Instant::now();
            }
        }
    }

    // Shutdown: pipeline first (stop audio), then MQTT (`offline`), all within 2 s.
    if let Some(p) = pipeline.take() {
        p.stop(Duration::from_millis(700));
    }
    if let Some(m) = mqtt.take() {
        m.shutdown(Duration::from_millis(900));
    }
    signals.close();
    Ok(Summary {
        state: shared.snapshot(),
        load_s,
        steps: shared.step_stats.figures(),
        latency: shared.latency_stats.figures(),
    })
}

fn start_mqtt(
    cfg: &Config,
    device_id: &str,
    shared: &Arc<Shared>,
    tx: &Sender<Msg>,
) -> anyhow::Result<Option<Mqtt>> {
    if !cfg.mqtt.enabled {
        return Ok(None);
    }
    let s = shared.clone();
    let tx = std::sync::Mutex::new(tx.clone());
    let on_command: mqtt::CommandFn = Arc::new(move |cmd| match cmd {
        Command::Conversation(on) => {
            s.conversation.store(on, Ordering::Relaxed);
            s.revision.fetch_add(1, Ordering::Relaxed);
        }
        Command::Mute(on) => {
            s.muted.store(on, Ordering::Relaxed);
            s.revision.fetch_add(1, Ordering::Relaxed);
        }
        Command::Volume(v) => {
            s.volume.store(v, Ordering::Relaxed);
            s.revision.fetch_add(1, Ordering::Relaxed);
        }
        Command::Reset => s.reset_requested.store(true, Ordering::Relaxed),
        Command::Voice(v) => {
            if let Ok(tx) = tx.lock() {
                let _ = tx.send(Msg::Voice(v));
            }
        }
    });
    let voices: Vec<String> = cfg.voices.keys().cloned().collect();
    let m = mqtt::start(&cfg.mqtt, device_id, voices, shared.clone(), on_command)
        .context("cannot set up MQTT (fix the [mqtt] section of the config)")?;
    Ok(Some(m))
}
