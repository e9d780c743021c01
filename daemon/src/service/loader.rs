//! Model loads, one at a time, on a loader thread: resolve (download) the files, size the
//! model against free memory, release the running model first when both do not fit, load.
//!
//! A request made while a load is in flight cancels it and waits as the next one; a newer
//! request replaces a waiting one (coalescing: a burst of voice switches loads the last
//! voice only). A cancelled load stops at its next step; a model it finished anyway is
//! dropped on the loader thread and never reaches the pipeline.

use super::events::Event;
use crate::config::Config;
use crate::control::Shared;
use crate::engine::BatchModel;
use crate::hub::HubHandle;
use crate::memory::{self, Footprint, Plan};
use crate::model_spec::ModelSpec;
use crate::store::Progress;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Builds the model from a resolved model, for this many conversations at once.
pub type EngineLoader =
    fn(spec: &ModelSpec, cfg: &Config, conversations: usize) -> anyhow::Result<Box<dyn BatchModel>>;

/// What to load.
#[derive(Clone)]
pub struct LoadRequest {
    /// The configuration to load it with (becomes the running one on success).
    pub cfg: Config,
    /// The voice preset.
    pub voice: String,
    /// Open the audio devices anew (start, audio settings changed, devices gone).
    pub reopen_audio: bool,
}

/// What the running model lends a load: its size, and a way to release it.
#[derive(Clone, Default)]
pub struct Running {
    /// The running model's memory.
    pub footprint: Option<Footprint>,
    /// Releases it (None when none runs).
    pub releaser: Option<Releaser>,
}

/// Releases the running model: the room's pipeline goes silent first (so that it does
/// not take the missing model for a failure), then the hub drops the weights.
#[derive(Clone)]
pub struct Releaser {
    /// The room's pipeline, when one runs.
    pub room: Option<crate::pipeline::Releaser>,
    /// The hub holding the model.
    pub hub: HubHandle,
}

impl Releaser {
    /// True once the model's memory is free (within `timeout` for each part).
    fn release(&self, timeout: Duration) -> bool {
        if let Some(r) = &self.room {
            r.release(timeout);
        }
        self.hub.release(timeout)
    }
}

/// A finished load.
pub struct LoadDone {
    /// Which load.
    pub id: u64,
    /// What was asked.
    pub request: LoadRequest,
    /// What came of it.
    pub outcome: Outcome,
    /// The running model was released to make room (the pipeline is silent now).
    pub released: bool,
}

/// How a load ended.
pub enum Outcome {
    /// A model, ready for the hub, its memory and what it was loaded from.
    Ready(Box<dyn BatchModel>, Footprint, Box<ModelSpec>),
    /// The reason, for the `error` topic and STATUS.
    Failed(String),
    /// Superseded by a newer request.
    Cancelled,
}

/// At most one load in flight, plus the latest request waiting behind it.
pub struct Loader {
    engine: EngineLoader,
    shared: Arc<Shared>,
    tx: Sender<Event>,
    next_id: u64,
    in_flight: Option<(u64, Arc<AtomicBool>)>,
    waiting: Option<LoadRequest>,
}

impl Loader {
    /// A loader that reports on `tx`.
    pub fn new(engine: EngineLoader, shared: Arc<Shared>, tx: Sender<Event>) -> Loader {
        Loader {
            engine,
            shared,
            tx,
            next_id: 1,
            in_flight: None,
            waiting: None,
        }
    }

    /// True while a load runs or waits.
    pub fn busy(&self) -> bool {
        self.in_flight.is_some() || self.waiting.is_some()
    }

    /// Starts `req` now, or (a load is in flight) cancels that one and queues `req` in
    /// place of any request already waiting.
    pub fn request(&mut self, req: LoadRequest, running: Running) {
        match &self.in_flight {
            Some((_, cancel)) => {
                cancel.store(true, Ordering::Relaxed);
                if self.waiting.replace(req).is_some() {
                    log::info!("a newer request replaces the waiting one");
                }
            }
            None => self.spawn(req, running),
        }
    }

    /// Marks load `id` finished; starts the waiting request, if any. False for a stale id.
    pub fn finished(&mut self, id: u64, running: Running) -> bool {
        if self.in_flight.as_ref().is_none_or(|(i, _)| *i != id) {
            return false;
        }
        self.in_flight = None;
        if let Some(req) = self.waiting.take() {
            self.spawn(req, running);
        }
        true
    }

    fn spawn(&mut self, request: LoadRequest, running: Running) {
        let id = self.next_id;
        self.next_id += 1;
        let cancel = Arc::new(AtomicBool::new(false));
        self.in_flight = Some((id, cancel.clone()));
        let job = Job {
            tx: self.tx.clone(),
            engine: self.engine,
            shared: self.shared.clone(),
            cancel,
            running,
        };
        let tx = self.tx.clone();
        let spawned = std::thread::Builder::new()
            .name("moshid-loader".into())
            .spawn(move || {
                let mut released = false;
                let outcome = job.run(&request, &mut released);
                let _ = tx.send(Event::Loaded(Box::new(LoadDone {
                    id,
                    request,
                    outcome,
                    released,
                })));
            });
        if let Err(e) = spawned {
            log::error!("cannot start the loader thread: {e}");
            self.in_flight = None;
        }
    }
}

/// One load, on the loader thread.
struct Job {
    /// The supervisor (a satellite's link reports its faults there).
    tx: Sender<Event>,
    engine: EngineLoader,
    shared: Arc<Shared>,
    cancel: Arc<AtomicBool>,
    running: Running,
}

impl Job {
    fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::Relaxed)
    }

    fn run(&self, req: &LoadRequest, released: &mut bool) -> Outcome {
        if req.cfg.model.source == crate::config::ModelSource::Remote {
            return self.satellite(req);
        }
        let spec = match self.resolve(req) {
            Ok(s) => s,
            Err(e) => return Outcome::Failed(e),
        };
        if self.cancelled() {
            return Outcome::Cancelled;
        }
        let need = match self.make_room(&spec, req, released) {
            Ok(n) => n,
            Err(e) => return Outcome::Failed(e),
        };
        if self.cancelled() {
            return Outcome::Cancelled;
        }
        log::info!(voice = req.voice.as_str(); "loading model {}", spec.lm.display());
        self.shared
            .set_status(&format!("loading model ({}, {})", spec.lm.display(), need));
        match (self.engine)(&spec, &req.cfg, need.conversations) {
            // Superseded meanwhile: dropped here, off the real-time threads.
            Ok(_) if self.cancelled() => Outcome::Cancelled,
            Ok(engine) => Outcome::Ready(engine, need, Box::new(spec)),
            Err(e) => Outcome::Failed(format!("{e:#}")),
        }
    }

    /// A satellite (`source = "remote"`): no files and no memory to plan, the model is a
    /// brain over the network; its link's faults are said on `error` by the supervisor.
    fn satellite(&self, req: &LoadRequest) -> Outcome {
        let tx = self.tx.clone();
        let report: crate::satellite::Report = Box::new(move |m: &str| {
            let _ = tx.send(Event::Fault(m.to_string()));
        });
        match crate::satellite::engine(&req.cfg, self.shared.clone(), report) {
            Ok(e) => Outcome::Ready(
                Box::new(
                    crate::engine::Solo::new(Box::new(e))
                        .with_refusal(&crate::satellite::refusal(&req.cfg)),
                ),
                Footprint::default(),
                Box::new(crate::satellite::model_spec(&req.cfg)),
            ),
            Err(e) => Outcome::Failed(format!("{e:#}")),
        }
    }

    /// Finds (downloads) the files, reporting progress.
    fn resolve(&self, req: &LoadRequest) -> Result<ModelSpec, String> {
        let shared = &self.shared;
        shared.set_status(&format!("locating model files for voice {}", req.voice));
        let mut last = Instant::now() - Duration::from_secs(1);
        let spec = crate::store::resolve(&req.cfg, &req.voice, &mut |p| {
            // Bytes arriving, or a retry counting down, are the loader's liveness.
            shared.beat();
            match p {
                Progress::Bytes { file, done, total } => {
                    if last.elapsed() < Duration::from_millis(500) && done != total {
                        return;
                    }
                    last = Instant::now();
                    let pct = if total > 0 {
                        done as f32 * 100.0 / total as f32
                    } else {
                        0.0
                    };
                    shared.set_download(Some((pct * 10.0).round() / 10.0));
                    shared.set_status(&format!(
                        "downloading {file}: {pct:.1}% of {:.2} GB",
                        total as f64 / 1e9
                    ));
                }
                Progress::Retrying { .. } => {
                    shared.set_status(&format!("download failed, retrying {p}"));
                }
            }
        });
        shared.set_download(None);
        spec.map_err(|e| e.to_string())
    }

    /// Sizes the model; when it fits only without the running one, releases that first.
    fn make_room(
        &self,
        spec: &ModelSpec,
        req: &LoadRequest,
        released: &mut bool,
    ) -> Result<Footprint, String> {
        let want = req.cfg.conversations();
        let (mut need, free) =
            memory::footprint(spec, &req.cfg.model, want).map_err(|e| format!("{e:#}"))?;
        if let Some(n) = memory::fit_conversations(&need, self.running.footprint.as_ref(), free) {
            need = need.with_conversations(n);
            let msg = format!(
                "memory holds {n} conversation(s) at once, not the {want} configured \
                 (the room and [web] max_conversations): web sessions beyond it wait or are \
                 refused as [web] busy says"
            );
            log::warn!("{msg}");
            self.shared.set_warning(&msg);
        }
        log::info!("model {} needs {need}", spec.lm.display());
        if memory::plan(&need, self.running.footprint.as_ref(), free)? == Plan::ReleaseFirst {
            let Some(r) = &self.running.releaser else {
                return Err(format!("the model needs {need}: not enough free memory"));
            };
            self.shared.set_status(&format!(
                "releasing the running model first: both do not fit (the new one needs {need})"
            ));
            log::warn!("memory: releasing the running model before loading the next one");
            *released = r.release(Duration::from_secs(60));
            if !*released {
                return Err("the running model could not be released in time".into());
            }
        }
        Ok(need)
    }
}
