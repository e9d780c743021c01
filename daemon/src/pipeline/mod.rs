//! The full-duplex loop on dedicated threads:
//! source -> (mute, AEC) -> engine step -> volume -> bounded queue -> sink.
//!
//! - `infer.rs`: the inference thread, one small method per concern (controls, phase,
//!   input, step, output, idle timeout);
//! - `output.rs`: the playback thread, routing frames to the room or a remote endpoint;
//! - here: the handle the supervisor holds, and the reaper thread that drops engines off
//!   the real-time threads.
//!
//! Inference never waits on the network: events go out with `try_send` and are dropped
//! (and counted) when nobody keeps up. When inference falls behind real time, the oldest
//! input frames are skipped (and counted) instead of letting latency grow. Output
//! buffers are recycled through a free list so steady state allocates no audio buffers.

mod infer;
mod output;
mod sounds;
mod wake;

pub use wake::{Heard, WakeParams};
#[cfg(test)]
mod tests;

use crate::control::Shared;
use crate::endpoint::Endpoint;
use crate::engine::Engine;
use crate::sound::EchoCancelFactory;
use crossbeam_channel::{bounded, unbounded, Receiver, Sender};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Something the pipeline tells the outside world.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// Moshi said some text.
    Transcript {
        /// The text piece (a SentencePiece piece with `▁` turned into a space).
        text: String,
        /// Seconds since the conversation started.
        time: f64,
    },
    /// The conversation ended because the user was silent for `idle_timeout`.
    IdleTimeout,
    /// The wake word was heard while the room was idle: its conversation starts.
    Wake(Heard),
    /// The room's source ended (WAV input) or failed for good.
    SourceEnded,
    /// A problem the supervisor reports on the `error` topic (a refused reload).
    Error(String),
}

/// Pipeline settings.
#[derive(Debug, Clone)]
pub struct Params {
    /// Input frames allowed to wait before the oldest are skipped (>= 1).
    pub queue_frames: usize,
    /// End a conversation after this much user silence (None = never).
    pub idle_timeout: Option<Duration>,
    /// Listen for this wake word while the room is idle (None = off).
    pub wake: Option<WakeParams>,
    /// Play the wake, end-of-conversation and error chimes (`[wake] sounds`).
    pub sounds: bool,
}

/// Where events go (each with try_send: a full queue drops the event and counts it).
pub type EventTx = tokio::sync::mpsc::Sender<Event>;

/// What the supervisor asks of the inference thread; applied between two frames.
pub(crate) enum Control {
    /// Use this model from the next frame on (the old one goes to the reaper).
    Swap(Box<dyn Engine>),
    /// Drop the model (the conversation goes silent); `done` fires once it is freed.
    Release { done: Sender<()> },
    /// Events go to these receivers from now on (MQTT was reconnected elsewhere).
    Events(Vec<EventTx>),
    /// Play this sound (when `Params::sounds`).
    Chime(moshid_models::wake::chime::Chime),
}

/// An engine to drop, and who waits for the memory to be free.
type Retired = (Box<dyn Engine>, Option<Sender<()>>);

/// Running pipeline threads.
pub struct Pipeline {
    stop: Arc<AtomicBool>,
    control: Sender<Control>,
    infer: Option<JoinHandle<Box<dyn Engine>>>,
    output: Option<JoinHandle<()>>,
}

/// A frame on its way to the speaker.
pub(crate) struct OutFrame {
    samples: Vec<f32>,
    captured_at: Instant,
}

/// What the output thread receives.
pub(crate) enum OutMsg {
    /// Play this.
    Frame(OutFrame),
}

/// A handle that releases the running model (for a loader that needs its memory).
#[derive(Clone)]
pub struct Releaser(Sender<Control>);

impl Releaser {
    /// Asks the inference thread to drop its model and waits until the memory is free
    /// (at most `timeout`); false if the pipeline is gone or too slow.
    pub fn release(&self, timeout: Duration) -> bool {
        let (done, freed) = bounded(1);
        self.0.send(Control::Release { done }).is_ok() && freed.recv_timeout(timeout).is_ok()
    }
}

impl Pipeline {
    /// Starts the inference, output and reaper threads with the room as endpoint.
    pub fn start(
        engine: Box<dyn Engine>,
        room: Endpoint,
        aec: Option<EchoCancelFactory>,
        shared: Arc<Shared>,
        events: Vec<EventTx>,
        params: Params,
    ) -> std::io::Result<Pipeline> {
        let Endpoint {
            source, mut sink, ..
        } = room;
        // The canceller's far end is what the device got, when the sink can tell.
        let far_ref = aec.as_ref().and_then(|_| sink.echo_reference());
        let stop = Arc::new(AtomicBool::new(false));
        let (control, control_rx) = unbounded::<Control>();
        let retired = spawn_reaper()?;
        let (out_tx, free_rx, output) = output::spawn(sink, params.queue_frames, &shared, &stop)?;
        let parts = infer::Parts {
            engine,
            control: control_rx,
            retired,
            source,
            aec,
            far_ref,
            shared,
            events,
            params,
            out: out_tx,
            free: free_rx,
        };
        let stop2 = stop.clone();
        let infer = std::thread::Builder::new()
            .name("moshid-infer".into())
            .spawn(move || infer::run(parts, &stop2))?;
        Ok(Pipeline {
            stop,
            control,
            infer: Some(infer),
            output: Some(output),
        })
    }

    /// Replaces the model between two frames (voice switch): the devices stay open and
    /// the next frame starts a fresh conversation state with the new model. The old model
    /// is dropped on the reaper thread, never on the real-time one.
    pub fn swap_engine(&self, engine: Box<dyn Engine>) {
        if let Err(e) = self.control.send(Control::Swap(engine)) {
            retire_elsewhere(e.into_inner());
        }
    }

    /// A handle to release the model from another thread (memory for the next one).
    pub fn releaser(&self) -> Releaser {
        Releaser(self.control.clone())
    }

    /// Plays a sound on the room's speaker, mixed into what plays (nothing when
    /// `Params::sounds` is off).
    pub fn chime(&self, c: moshid_models::wake::chime::Chime) {
        let _ = self.control.send(Control::Chime(c));
    }

    /// Sends events to these receivers from the next frame on.
    pub fn set_events(&self, events: Vec<EventTx>) {
        let _ = self.control.send(Control::Events(events));
    }

    /// True once both threads have ended (source exhausted or failed).
    pub fn is_finished(&self) -> bool {
        self.infer.as_ref().is_none_or(|h| h.is_finished())
            && self.output.as_ref().is_none_or(|h| h.is_finished())
    }

    /// Stops the threads and waits for them, at most `timeout` (threads still stuck in
    /// a device call are left behind: the process is about to exit or reload anyway).
    /// Gives the model back for the next pipeline when the inference thread ended in time.
    pub fn stop(mut self, timeout: Duration) -> Option<Box<dyn Engine>> {
        self.stop.store(true, Ordering::Relaxed);
        let deadline = Instant::now() + timeout;
        let engine = self.infer.take().and_then(|h| join_by(h, deadline));
        if let Some(h) = self.output.take() {
            join_by(h, deadline);
        }
        engine
    }

    /// Waits until the source is exhausted and playback has drained (file-backed runs).
    #[cfg(test)]
    pub fn wait(mut self) {
        if let Some(h) = self.infer.take() {
            let _ = h.join();
        }
        if let Some(h) = self.output.take() {
            let _ = h.join();
        }
    }
}

fn join_by<T>(h: JoinHandle<T>, deadline: Instant) -> Option<T> {
    while !h.is_finished() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    if h.is_finished() {
        h.join().ok()
    } else {
        log::warn!("a pipeline thread did not stop in time; leaving it");
        None
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The reaper: drops retired engines (multi-GB frees take a while) away from the real-time
/// threads, then tells whoever waits for the memory.
fn spawn_reaper() -> std::io::Result<Sender<Retired>> {
    let (tx, rx): (Sender<Retired>, Receiver<Retired>) = unbounded();
    std::thread::Builder::new()
        .name("moshid-reaper".into())
        .spawn(move || {
            for (engine, done) in rx {
                drop(engine);
                if let Some(d) = done {
                    let _ = d.send(());
                }
            }
        })?;
    Ok(tx)
}

/// Drops a model on a short-lived thread (when no pipeline can take it).
pub fn retire_elsewhere(c: impl Into<Option<Box<dyn Engine>>>) {
    if let Some(e) = c.into() {
        let _ = std::thread::Builder::new()
            .name("moshid-reaper".into())
            .spawn(move || drop(e));
    }
}

impl From<Control> for Option<Box<dyn Engine>> {
    fn from(c: Control) -> Self {
        match c {
            Control::Swap(e) => Some(e),
            _ => None,
        }
    }
}
