//! The conversation hub: one [`BatchModel`] on a real-time scheduler thread, and a handle
//! per conversation ([`HubConversation`], an [`Engine`]) that the room's pipeline or a web
//! session steps from its own thread.
//!
//! Scheduling (as Kyutai's batched server, with handles instead of polling): a round steps
//! at most once per `period` (80 ms, one frame): when its first frame arrives, the
//! scheduler waits for the other active conversations' frames until the period since the
//! last round is over and at least `gather` (a few ms) has passed, or until every active
//! conversation has sent one, then steps every conversation whose frame is there in one
//! batch. Clients whose clocks are out of phase thus share steps; the others are masked for
//! that step and never delay it beyond the tick. A conversation
//! whose client stalls costs only its own frames. Buffers travel with the messages and
//! come back with the replies, so a steady state allocates nothing per frame.

mod door;

pub use door::{HubDoor, Served};

use crate::engine::{BatchFrame, BatchModel, Engine, EngineError, JoinRequest, SamplingOverride};
use crossbeam_channel::{bounded, unbounded, Receiver, RecvTimeoutError, Sender};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long a conversation's step waits for the scheduler before it fails (a stalled model
/// shows as an error in that conversation instead of a wedged thread).
const STEP_WAIT: Duration = Duration::from_secs(5);

/// How the scheduler forms rounds.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// At most one round per period (a frame: 80 ms).
    pub period: Duration,
    /// After a round's first frame, how long it waits at least for the others.
    pub gather: Duration,
}

impl Timing {
    /// One round per 80 ms frame, waiting 5 ms at least.
    pub fn realtime() -> Timing {
        Timing {
            period: Duration::from_millis(80),
            gather: Duration::from_millis(5),
        }
    }
}

/// What the scheduler is asked.
enum Msg {
    Join {
        request: JoinRequest,
        reply: Sender<Result<usize, EngineError>>,
    },
    Leave(usize),
    Reset {
        slot: usize,
        done: Sender<Result<(), EngineError>>,
    },
    Sampling(usize, SamplingOverride),
    Step(StepMsg),
    /// Drop the model now (memory for the next one); conversations fail from then on.
    Release(Sender<()>),
    Stop,
}

/// One conversation's frame, with the buffers its reply comes back in.
struct StepMsg {
    slot: usize,
    input: Vec<f32>,
    output: Vec<f32>,
    text: String,
    reply: Sender<StepMsg>,
    result: Result<(), EngineError>,
}

/// Figures the state shows.
#[derive(Debug, Default)]
pub struct HubStats {
    /// Conversations holding a slot.
    pub active: AtomicUsize,
    /// Batched steps run.
    pub steps: AtomicU64,
    /// Conversations stepped in all (the sum of the batches' sizes).
    pub frames: AtomicU64,
    /// The last batched step's wall time, microseconds.
    pub last_step_us: AtomicU64,
}

/// The scheduler thread and its model. Dropping it stops the thread and frees the model.
pub struct Hub {
    handle: HubHandle,
    thread: Option<JoinHandle<()>>,
}

/// What conversations need of a running [`Hub`]: a way in (join), its size and figures.
/// Cheap to clone; it does not keep the model alive (a join after the hub is gone fails).
#[derive(Clone)]
pub struct HubHandle {
    tx: Sender<Msg>,
    capacity: usize,
    describe: Arc<str>,
    stats: Arc<HubStats>,
}

impl Hub {
    /// Starts the scheduler over `model` with these rounds.
    pub fn start(model: Box<dyn BatchModel>, timing: Timing) -> std::io::Result<Hub> {
        let (tx, rx) = unbounded();
        let stats = Arc::new(HubStats::default());
        let capacity = model.capacity();
        let describe = model.describe();
        let s = stats.clone();
        let thread = std::thread::Builder::new()
            .name("moshid-hub".into())
            .spawn(move || Scheduler::new(model, rx, timing, s).run())?;
        let handle = HubHandle {
            tx,
            capacity,
            describe: describe.into(),
            stats,
        };
        Ok(Hub {
            handle,
            thread: Some(thread),
        })
    }

    /// A handle for the conversations' side (web sessions join through it).
    pub fn handle(&self) -> &HubHandle {
        &self.handle
    }

    /// Conversations the model can hold at once.
    pub fn capacity(&self) -> usize {
        self.handle.capacity
    }

    /// The model's one-line description.
    pub fn describe(&self) -> &str {
        &self.handle.describe
    }

    /// The scheduler's figures.
    pub fn stats(&self) -> &Arc<HubStats> {
        &self.handle.stats
    }

    /// A new conversation in a free slot (see [`HubHandle::join`]).
    pub fn join(&self, request: JoinRequest) -> Result<HubConversation, EngineError> {
        self.handle.join(request)
    }
}

impl HubHandle {
    /// Conversations the model can hold at once.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// The model's one-line description.
    pub fn describe(&self) -> &str {
        &self.describe
    }

    /// True when both handles lead to the same hub.
    pub fn same(&self, other: &HubHandle) -> bool {
        Arc::ptr_eq(&self.stats, &other.stats)
    }

    /// Drops the model on the scheduler thread and waits until it is freed (at most
    /// `timeout`): memory for the next model. False when the hub is gone or too slow.
    pub fn release(&self, timeout: Duration) -> bool {
        let (done, freed) = bounded(1);
        self.tx.send(Msg::Release(done)).is_ok() && freed.recv_timeout(timeout).is_ok()
    }

    /// A new conversation in a free slot, with the request's sampling and persona; an error
    /// when all are taken. (`hub.join(sampling.into())` for sampling alone.)
    pub fn join(&self, request: JoinRequest) -> Result<HubConversation, EngineError> {
        let (reply, answer) = bounded(1);
        let gone = || EngineError("the model is not running".into());
        self.tx
            .send(Msg::Join { request, reply })
            .map_err(|_| gone())?;
        let slot = answer.recv_timeout(STEP_WAIT).map_err(|_| gone())??;
        let (rtx, rrx) = bounded(1);
        Ok(HubConversation {
            tx: self.tx.clone(),
            slot,
            reply_tx: rtx,
            reply_rx: rrx,
            bufs: Some((Vec::new(), Vec::new(), String::new())),
            describe: format!("{} (conversation slot {slot})", self.describe),
        })
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        let _ = self.handle.tx.send(Msg::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One conversation's hold on a slot of the hub's model; leaves the slot when dropped.
pub struct HubConversation {
    tx: Sender<Msg>,
    slot: usize,
    reply_tx: Sender<StepMsg>,
    reply_rx: Receiver<StepMsg>,
    /// Input, output and text buffers, away while a step is in flight.
    bufs: Option<(Vec<f32>, Vec<f32>, String)>,
    describe: String,
}

impl HubConversation {
    /// The slot this conversation holds.
    pub fn slot(&self) -> usize {
        self.slot
    }
}

impl Engine for HubConversation {
    fn step(
        &mut self,
        input: &[f32],
        output: &mut [f32],
        text: &mut String,
    ) -> Result<(), EngineError> {
        let (mut i, mut o, mut t) = self.bufs.take().unwrap_or_default();
        i.clear();
        i.extend_from_slice(input);
        o.resize(output.len(), 0.0);
        t.clear();
        let msg = StepMsg {
            slot: self.slot,
            input: i,
            output: o,
            text: t,
            reply: self.reply_tx.clone(),
            result: Ok(()),
        };
        if self.tx.send(Msg::Step(msg)).is_err() {
            return Err(EngineError(
                "the model stopped (it was replaced or unloaded)".into(),
            ));
        }
        let back = self
            .reply_rx
            .recv_timeout(STEP_WAIT)
            .map_err(|_| EngineError(format!("no reply from the model within {STEP_WAIT:?}")))?;
        output.copy_from_slice(&back.output[..output.len()]);
        text.push_str(&back.text);
        self.bufs = Some((back.input, back.output, back.text));
        back.result
    }

    fn reset(&mut self) {
        let (done, answer) = bounded(1);
        let slot = self.slot;
        if self.tx.send(Msg::Reset { slot, done }).is_ok() {
            if let Ok(Err(e)) = answer.recv_timeout(STEP_WAIT) {
                log::warn!("conversation slot {slot}: reset: {e}");
            }
        }
    }

    fn set_sampling(&mut self, s: &SamplingOverride) {
        let _ = self.tx.send(Msg::Sampling(self.slot, *s));
    }

    fn describe(&self) -> String {
        self.describe.clone()
    }
}

impl Drop for HubConversation {
    fn drop(&mut self) {
        let _ = self.tx.send(Msg::Leave(self.slot));
    }
}

/// The scheduler thread's state.
struct Scheduler {
    /// None once released (see [`HubHandle::release`]).
    model: Option<Box<dyn BatchModel>>,
    rx: Receiver<Msg>,
    timing: Timing,
    stats: Arc<HubStats>,
    /// When the last round stepped.
    last_round: Option<Instant>,
    active: Vec<bool>,
    /// Frames of the round being gathered, by slot.
    pending: Vec<Option<StepMsg>>,
}

impl Scheduler {
    fn new(
        model: Box<dyn BatchModel>,
        rx: Receiver<Msg>,
        timing: Timing,
        stats: Arc<HubStats>,
    ) -> Scheduler {
        let n = model.capacity();
        Scheduler {
            model: Some(model),
            rx,
            timing,
            stats,
            last_round: None,
            active: vec![false; n],
            pending: (0..n).map(|_| None).collect(),
        }
    }

    fn run(mut self) {
        while let Ok(msg) = self.rx.recv() {
            let Some(first) = self.handle(msg) else {
                return;
            };
            if first.is_some() {
                if !self.gather_round() {
                    return;
                }
                self.step();
            }
        }
    }

    /// Waits for the frames of every active conversation, until the tick (see the module
    /// documentation); false on Stop.
    fn gather_round(&mut self) -> bool {
        let now = Instant::now();
        let tick = self.last_round.map_or(now, |t| t + self.timing.period);
        let deadline = tick.max(now + self.timing.gather);
        loop {
            let waiting = self.active.iter().zip(&self.pending);
            if waiting.filter(|(a, p)| **a && p.is_none()).count() == 0 {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(m) => {
                    if self.handle(m).is_none() {
                        return false;
                    }
                }
                Err(RecvTimeoutError::Timeout) => return true,
                Err(RecvTimeoutError::Disconnected) => return true,
            }
        }
    }

    /// Applies one message; `None` on Stop, `Some(Some(()))` when it was a frame.
    fn handle(&mut self, msg: Msg) -> Option<Option<()>> {
        match msg {
            Msg::Join { request, reply } => {
                let r = match self.model.as_mut() {
                    Some(m) => m.join(&request),
                    None => Err(released()),
                };
                if let Ok(slot) = r {
                    self.active[slot] = true;
                    self.stats.active.fetch_add(1, Ordering::Relaxed);
                }
                let _ = reply.send(r);
            }
            Msg::Leave(slot) => {
                if self.active.get(slot) == Some(&true) {
                    if let Some(m) = self.model.as_mut() {
                        m.leave(slot);
                    }
                    self.active[slot] = false;
                    self.pending[slot] = None;
                    self.stats.active.fetch_sub(1, Ordering::Relaxed);
                }
            }
            Msg::Reset { slot, done } => {
                let r = self
                    .model
                    .as_mut()
                    .map_or(Err(released()), |m| m.reset(slot));
                let _ = done.send(r);
            }
            Msg::Sampling(slot, s) => {
                let r = self.model.as_mut().map(|m| m.set_sampling(slot, &s));
                if let Some(Err(e)) = r {
                    log::warn!("conversation slot {slot}: {e}");
                }
            }
            Msg::Release(done) => {
                // Frames waiting for this round are answered (failed) by `step`.
                drop(self.model.take());
                let _ = done.send(());
            }
            Msg::Step(m) => return Some(self.queue(m)),
            Msg::Stop => return None,
        }
        Some(None)
    }

    /// Puts a frame in the round; a second frame of a slot (or one of a free slot) is
    /// answered with an error at once.
    fn queue(&mut self, mut m: StepMsg) -> Option<()> {
        let slot = m.slot;
        if self.active.get(slot) != Some(&true) || self.pending[slot].is_some() {
            m.result = Err(EngineError(format!(
                "conversation slot {slot}: frame refused (slot free, or a frame already waits)"
            )));
            let reply = m.reply.clone();
            let _ = reply.send(m);
            return None;
        }
        self.pending[slot] = Some(m);
        Some(())
    }

    /// Steps the gathered frames in one batch and answers each.
    fn step(&mut self) {
        let mut msgs: Vec<StepMsg> = self.pending.iter_mut().filter_map(Option::take).collect();
        if msgs.is_empty() {
            return;
        }
        let t0 = Instant::now();
        self.last_round = Some(t0);
        {
            let mut frames: Vec<BatchFrame<'_>> = msgs
                .iter_mut()
                .map(|m| BatchFrame {
                    slot: m.slot,
                    input: &m.input,
                    output: &mut m.output,
                    text: &mut m.text,
                    result: Ok(()),
                })
                .collect();
            match self.model.as_mut() {
                Some(model) => model.step(&mut frames),
                None => frames.iter_mut().for_each(|f| f.result = Err(released())),
            }
            let results: Vec<_> = frames.into_iter().map(|f| f.result).collect();
            for (m, r) in msgs.iter_mut().zip(results) {
                m.result = r;
            }
        }
        let us = t0.elapsed().as_micros() as u64;
        self.stats.last_step_us.store(us, Ordering::Relaxed);
        self.stats.steps.fetch_add(1, Ordering::Relaxed);
        self.stats
            .frames
            .fetch_add(msgs.len() as u64, Ordering::Relaxed);
        for m in msgs {
            let reply = m.reply.clone();
            let _ = reply.send(m);
        }
    }
}

/// What a conversation hears once the model was released for the next one.
fn released() -> EngineError {
    EngineError("the model was released to load the next one".into())
}

#[cfg(test)]
mod tests;
