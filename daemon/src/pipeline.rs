//! The full-duplex loop on dedicated threads:
//! source -> (mute, AEC) -> engine step -> volume -> bounded queue -> sink.
//!
//! Inference never waits on the network: events go out with `try_send` and are dropped
//! (and counted) when nobody keeps up. When inference falls behind real time, the oldest
//! input frames are skipped (and counted) instead of letting latency grow. Output
//! buffers are recycled through a free list so steady state allocates no audio buffers.

use crate::control::{Phase, Shared};
use crate::engine::Engine;
use crate::sound::{
    EchoCancel, EchoCancelFactory, EchoReference, InFrame, Sink, SoundError, Source,
};
use crossbeam_channel::{bounded, Receiver, Sender, TryRecvError};
use moshid_hal::FRAME_SAMPLES;
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
    /// The source ended (WAV input) or failed for good.
    SourceEnded,
}

/// Pipeline settings.
#[derive(Debug, Clone)]
pub struct Params {
    /// Input frames allowed to wait before the oldest are skipped (>= 1).
    pub queue_frames: usize,
    /// End a conversation after this much user silence (None = never).
    pub idle_timeout: Option<Duration>,
}

/// Where events go (each with try_send: a full queue drops the event and counts it).
pub type EventTx = tokio::sync::mpsc::Sender<Event>;

/// Running pipeline threads.
pub struct Pipeline {
    stop: Arc<AtomicBool>,
    engine_tx: Sender<Box<dyn Engine>>,
    infer: Option<JoinHandle<()>>,
    output: Option<JoinHandle<()>>,
}

/// User audio below this RMS counts as silence for the idle timeout (about -50 dBFS).
const SILENCE_RMS: f32 = 0.003;

struct OutFrame {
    samples: Vec<f32>,
    captured_at: Instant,
}

impl Pipeline {
    /// Starts the inference and output threads.
    pub fn start(
        engine: Box<dyn Engine>,
        source: Box<dyn Source>,
        mut sink: Box<dyn Sink>,
        aec: Option<EchoCancelFactory>,
        shared: Arc<Shared>,
        events: Vec<EventTx>,
        params: Params,
    ) -> std::io::Result<Pipeline> {
        // The canceller's far end is what the device got, when the sink can tell.
        let far_ref = if aec.is_some() {
            sink.echo_reference()
        } else {
            None
        };
        let stop = Arc::new(AtomicBool::new(false));
        let (engine_tx, engine_rx) = bounded::<Box<dyn Engine>>(1);
        let depth = params.queue_frames.max(1) + 1;
        let (full_tx, full_rx) = bounded::<OutFrame>(depth);
        let (free_tx, free_rx) = bounded::<Vec<f32>>(depth);
        for _ in 0..depth {
            let _ = free_tx.try_send(vec![0.0; FRAME_SAMPLES]);
        }
        let output = {
            let stop = stop.clone();
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("moshid-playback".into())
                .spawn(move || output_loop(sink, full_rx, free_tx, shared, stop))?
        };
        let infer = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("moshid-infer".into())
                .spawn(move || {
                    // Built here: cancellers need not be Send.
                    let aec = aec.and_then(|make| match make() {
                        Ok(a) => Some(a),
                        Err(e) => {
                            log::error!("echo cancellation disabled: {e}");
                            None
                        }
                    });
                    let mut l = InferLoop {
                        engine,
                        engine_rx,
                        source,
                        aec,
                        shared,
                        events,
                        params,
                        full_tx,
                        free_rx,
                        far: vec![0.0; FRAME_SAMPLES],
                        far_ref,
                        text: String::with_capacity(64),
                        in_conversation: None,
                        conv_start: Instant::now(),
                        last_voice: Instant::now(),
                        silence: vec![0.0; FRAME_SAMPLES],
                    };
                    l.run(&stop)
                })?
        };
        Ok(Pipeline {
            stop,
            engine_tx,
            infer: Some(infer),
            output: Some(output),
        })
    }

    /// Replaces the model between two frames (voice switch): the devices stay open and
    /// the next frame starts a fresh conversation state with the new model.
    pub fn swap_engine(&self, engine: Box<dyn Engine>) {
        if self.engine_tx.try_send(engine).is_err() {
            log::warn!("a model swap is already pending; this one is dropped");
        }
    }

    /// True once both threads have ended (source exhausted or failed).
    pub fn is_finished(&self) -> bool {
        self.infer.as_ref().is_none_or(|h| h.is_finished())
            && self.output.as_ref().is_none_or(|h| h.is_finished())
    }

    /// Stops the threads and waits for them, at most `timeout` (threads still stuck in
    /// a device call are left behind: the process is about to exit or reload anyway).
    pub fn stop(mut self, timeout: Duration) {
        self.stop.store(true, Ordering::Relaxed);
        let deadline = Instant::now() + timeout;
        for h in [self.infer.take(), self.output.take()]
            .into_iter()
            .flatten()
        {
            while !h.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            if h.is_finished() {
                let _ = h.join();
            } else {
                log::warn!("a pipeline thread did not stop in time; leaving it");
            }
        }
    }

    /// Waits until the source is exhausted and playback has drained (file-backed runs).
    #[cfg(test)]
    pub fn wait(mut self) {
        for h in [self.infer.take(), self.output.take()]
            .into_iter()
            .flatten()
        {
            let _ = h.join();
        }
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

struct InferLoop {
    engine: Box<dyn Engine>,
    engine_rx: Receiver<Box<dyn Engine>>,
    source: Box<dyn Source>,
    aec: Option<Box<dyn EchoCancel>>,
    shared: Arc<Shared>,
    events: Vec<EventTx>,
    params: Params,
    full_tx: Sender<OutFrame>,
    free_rx: Receiver<Vec<f32>>,
    /// The echo reference for the next microphone frame.
    far: Vec<f32>,
    /// The device's own reference; without it `far` is the last frame queued for playback.
    far_ref: Option<EchoReference>,
    text: String,
    /// None until the first frame, so the initial phase is always published.
    in_conversation: Option<bool>,
    conv_start: Instant,
    last_voice: Instant,
    silence: Vec<f32>,
}

impl InferLoop {
    fn emit(&self, ev: Event) {
        for tx in &self.events {
            if tx.try_send(ev.clone()).is_err() {
                self.shared.dropped_events.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn run(&mut self, stop: &AtomicBool) {
        while !stop.load(Ordering::Relaxed) {
            let mut frame = match self.source.recv(Duration::from_millis(200)) {
                Ok(Some(f)) => f,
                Ok(None) => continue, // no heartbeat: a stalled device shows as no progress
                Err(SoundError::Ended) => {
                    self.emit(Event::SourceEnded);
                    break;
                }
                Err(e) => {
                    log::error!("microphone failed: {e}");
                    self.shared.set_error(&format!("microphone: {e}"));
                    self.emit(Event::SourceEnded);
                    break;
                }
            };
            // Behind real time: skip the oldest frames so latency stays bounded.
            while self.source.backlog() >= self.params.queue_frames {
                match self.source.recv(Duration::ZERO) {
                    Ok(Some(newer)) => {
                        let old = std::mem::replace(&mut frame, newer);
                        self.source.recycle(old);
                        self.shared.dropped_frames.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => break,
                }
            }
            let go_on = self.handle(&mut frame);
            self.source.recycle(frame);
            if !go_on {
                break;
            }
        }
    }

    /// Processes one frame; false stops the loop.
    fn handle(&mut self, frame: &mut InFrame) -> bool {
        self.shared.beat();
        if let Ok(e) = self.engine_rx.try_recv() {
            log::info!("model swapped in: {}", e.describe());
            self.engine = e;
            // Forces a reset and a phase update below.
            self.in_conversation = None;
        }
        if frame.samples.len() != FRAME_SAMPLES {
            log::warn!(
                "source gave a frame of {} samples, expected {FRAME_SAMPLES}; skipped",
                frame.samples.len()
            );
            return true;
        }

        let want = self.shared.conversation.load(Ordering::Relaxed);
        if Some(want) != self.in_conversation
            || self.shared.reset_requested.swap(false, Ordering::Relaxed)
        {
            // Every conversation starts from a fresh model state.
            self.engine.reset();
            self.in_conversation = Some(want);
            self.conv_start = Instant::now();
            self.last_voice = Instant::now();
            if self.shared.phase() != Phase::Error {
                self.shared.set_phase(if want {
                    Phase::Conversation
                } else {
                    Phase::Idle
                });
            }
        }
        if !want {
            return true;
        }

        let muted = self.shared.muted.load(Ordering::Relaxed);
        let input: &mut [f32] = if muted {
            self.silence.fill(0.0);
            &mut self.silence
        } else {
            if let Some(aec) = self.aec.as_mut() {
                if let Some(r) = &self.far_ref {
                    next_far(r, &mut self.far);
                }
                aec.process(&self.far, &mut frame.samples);
            }
            &mut frame.samples
        };
        let rms = (input.iter().map(|x| x * x).sum::<f32>() / FRAME_SAMPLES as f32).sqrt();
        self.shared.record_input_rms(rms);
        if rms > SILENCE_RMS {
            self.last_voice = Instant::now();
        }

        // Playback behind too: no free buffer means the output queue is full.
        let mut out = match self.free_rx.try_recv() {
            Ok(b) => b,
            Err(TryRecvError::Empty) => {
                self.shared.dropped_output.fetch_add(1, Ordering::Relaxed);
                if self.far_ref.is_none() {
                    self.far.fill(0.0);
                }
                return true;
            }
            Err(TryRecvError::Disconnected) => return false,
        };
        let t0 = Instant::now();
        self.text.clear();
        if let Err(e) = self.engine.step(input, &mut out, &mut self.text) {
            log::error!("{e}");
            self.shared.set_error(&e.to_string());
            return false;
        }
        let step_s = t0.elapsed().as_secs_f32();
        self.shared.record_step(step_s);
        let gain = self.shared.volume.load(Ordering::Relaxed) as f32 / 100.0;
        for s in out.iter_mut() {
            *s = (*s * gain).clamp(-1.0, 1.0);
        }
        if self.far_ref.is_none() {
            self.far.copy_from_slice(&out);
        }
        if !self.text.is_empty() {
            let text = self.text.clone();
            self.emit(Event::Transcript {
                text,
                time: self.conv_start.elapsed().as_secs_f64(),
            });
        }
        if self
            .full_tx
            .send(OutFrame {
                samples: out,
                captured_at: frame.captured_at,
            })
            .is_err()
        {
            return false;
        }
        // The source keeps its frame buffers; recycle ours by reusing `frame` next loop.
        if let Some(t) = self.params.idle_timeout {
            if self.last_voice.elapsed() >= t {
                log::info!(idle_s = t.as_secs(); "no speech for the idle timeout: ending the conversation");
                self.shared.conversation.store(false, Ordering::Relaxed);
                self.emit(Event::IdleTimeout);
            }
        }
        true
    }
}

/// Takes the device's next far-end frame into `far`: one per microphone frame, so both
/// streams advance together; a backlog beyond a few frames (the canceller was idle) is
/// dropped to the newest. Nothing played yet means silence.
fn next_far(r: &EchoReference, far: &mut [f32]) {
    while r.frames.len() > 2 {
        if let Ok(old) = r.frames.try_recv() {
            let _ = r.spare.try_send(old.samples);
        }
    }
    match r.frames.try_recv() {
        Ok(f) => {
            if f.samples.len() == far.len() {
                far.copy_from_slice(&f.samples);
            } else {
                far.fill(0.0);
            }
            let _ = r.spare.try_send(f.samples);
        }
        Err(_) => far.fill(0.0),
    }
}

fn output_loop(
    mut sink: Box<dyn Sink>,
    full_rx: Receiver<OutFrame>,
    free_tx: Sender<Vec<f32>>,
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
) {
    loop {
        let f = match full_rx.recv_timeout(Duration::from_millis(200)) {
            Ok(f) => f,
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                continue;
            }
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break,
        };
        if let Err(e) = sink.play(&f.samples) {
            log::error!("speaker failed: {e}");
            shared.set_error(&format!("speaker: {e}"));
            break;
        }
        let latency = f.captured_at.elapsed() + sink.delay();
        shared.record_latency(latency.as_secs_f32() * 1000.0);
        let _ = free_tx.try_send(f.samples);
    }
    if let Err(e) = sink.finish() {
        log::error!("speaker: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::EngineError;
    use std::sync::Mutex;

    /// Echoes its input at half amplitude and says "w<N>" every 5 steps; optionally slow.
    struct Scripted {
        n: usize,
        delay: Duration,
        resets: Arc<Mutex<usize>>,
        inputs: Arc<Mutex<Vec<f32>>>,
    }
    impl Engine for Scripted {
        fn step(&mut self, i: &[f32], o: &mut [f32], t: &mut String) -> Result<(), EngineError> {
            std::thread::sleep(self.delay);
            self.inputs.lock().unwrap().extend_from_slice(i);
            for (o, i) in o.iter_mut().zip(i) {
                *o = i * 0.5;
            }
            self.n += 1;
            if self.n % 5 == 0 {
                t.push_str(&format!(" w{}", self.n));
            }
            Ok(())
        }
        fn reset(&mut self) {
            *self.resets.lock().unwrap() += 1;
        }
        fn describe(&self) -> String {
            "scripted".into()
        }
    }

    /// A source of constant frames, produced every `period` by its own thread.
    struct Synth {
        rx: Receiver<crate::sound::InFrame>,
    }
    impl Synth {
        fn new(frames: usize, period: Duration, value: f32) -> Synth {
            let (tx, rx) = bounded(64);
            std::thread::spawn(move || {
                for _ in 0..frames {
                    let f = crate::sound::InFrame {
                        samples: vec![value; FRAME_SAMPLES],
                        captured_at: Instant::now(),
                    };
                    if tx.send(f).is_err() {
                        return;
                    }
                    std::thread::sleep(period);
                }
            });
            Synth { rx }
        }
    }
    impl Source for Synth {
        fn recv(&mut self, t: Duration) -> Result<Option<crate::sound::InFrame>, SoundError> {
            match self.rx.recv_timeout(t) {
                Ok(f) => Ok(Some(f)),
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => Ok(None),
                Err(_) => Err(SoundError::Ended),
            }
        }
        fn backlog(&self) -> usize {
            self.rx.len()
        }
    }

    struct Collect(Arc<Mutex<Vec<f32>>>);
    impl Sink for Collect {
        fn play(&mut self, s: &[f32]) -> Result<(), SoundError> {
            self.0.lock().unwrap().extend_from_slice(s);
            Ok(())
        }
    }

    fn run(
        frames: usize,
        period: Duration,
        step: Duration,
        shared: Arc<Shared>,
        queue_frames: usize,
    ) -> (Vec<f32>, Vec<f32>, Vec<Event>) {
        let out = Arc::new(Mutex::new(Vec::new()));
        let inputs = Arc::new(Mutex::new(Vec::new()));
        let (tx, mut rx) = tokio::sync::mpsc::channel(1000);
        let p = Pipeline::start(
            Box::new(Scripted {
                n: 0,
                delay: step,
                resets: Arc::new(Mutex::new(0)),
                inputs: inputs.clone(),
            }),
            Box::new(Synth::new(frames, period, 0.2)),
            Box::new(Collect(out.clone())),
            None,
            shared,
            vec![tx],
            Params {
                queue_frames,
                idle_timeout: None,
            },
        )
        .unwrap();
        p.wait();
        let mut evs = Vec::new();
        while let Ok(e) = rx.try_recv() {
            evs.push(e);
        }
        let o = out.lock().unwrap().clone();
        let i = inputs.lock().unwrap().clone();
        (o, i, evs)
    }

    #[test]
    fn silence_ends_the_conversation_after_the_idle_timeout() {
        let shared = Arc::new(Shared::new("v", 100, true));
        let (tx, mut rx) = tokio::sync::mpsc::channel(1000);
        let p = Pipeline::start(
            Box::new(Scripted {
                n: 0,
                delay: Duration::ZERO,
                resets: Arc::new(Mutex::new(0)),
                inputs: Arc::new(Mutex::new(Vec::new())),
            }),
            // 40 silent frames, 5 ms apart: 200 ms of silence against a 60 ms timeout.
            Box::new(Synth::new(40, Duration::from_millis(5), 0.0)),
            Box::new(Collect(Arc::new(Mutex::new(Vec::new())))),
            None,
            shared.clone(),
            vec![tx],
            Params {
                queue_frames: 30,
                idle_timeout: Some(Duration::from_millis(60)),
            },
        )
        .unwrap();
        p.wait();
        let mut evs = Vec::new();
        while let Ok(e) = rx.try_recv() {
            evs.push(e);
        }
        assert!(evs.contains(&Event::IdleTimeout), "{evs:?}");
        assert!(!shared.conversation.load(Ordering::Relaxed));
        assert_eq!(shared.phase(), Phase::Idle);
        let steps = shared.steps.load(Ordering::Relaxed);
        assert!((5..40).contains(&steps), "{steps} steps");
    }

    #[test]
    fn conversation_plays_model_audio_and_emits_text() {
        let shared = Arc::new(Shared::new("v", 100, true));
        let (out, _, evs) = run(
            20,
            Duration::from_millis(2),
            Duration::ZERO,
            shared.clone(),
            30,
        );
        assert_eq!(out.len(), 20 * FRAME_SAMPLES);
        assert!(out.iter().all(|&x| (x - 0.1).abs() < 1e-6));
        let words: Vec<_> = evs
            .iter()
            .filter_map(|e| match e {
                Event::Transcript { text, .. } => Some(text.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(words, [" w5", " w10", " w15", " w20"]);
        assert_eq!(evs.last(), Some(&Event::SourceEnded));
        assert_eq!(shared.phase(), Phase::Conversation);
        assert_eq!(shared.dropped_frames.load(Ordering::Relaxed), 0);
        assert!(shared.since_beat().is_some());
    }

    #[test]
    fn mute_feeds_silence_and_volume_scales() {
        let shared = Arc::new(Shared::new("v", 50, true));
        shared.muted.store(true, Ordering::Relaxed);
        let (out, inputs, _) = run(5, Duration::from_millis(2), Duration::ZERO, shared, 30);
        assert!(!inputs.is_empty() && inputs.iter().all(|&x| x == 0.0));
        assert!(out.iter().all(|&x| x == 0.0));
    }

    #[test]
    fn idle_when_conversation_off() {
        let shared = Arc::new(Shared::new("v", 100, false));
        let (out, inputs, _) = run(
            5,
            Duration::from_millis(2),
            Duration::ZERO,
            shared.clone(),
            30,
        );
        assert!(out.is_empty() && inputs.is_empty());
        assert_eq!(shared.phase(), Phase::Idle);
        assert_eq!(shared.steps.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn slow_engine_skips_frames_instead_of_queueing() {
        // Frames every 2 ms, steps of 10 ms: inference is 5x slower than the input.
        let shared = Arc::new(Shared::new("v", 100, true));
        let (_, inputs, _) = run(
            60,
            Duration::from_millis(2),
            Duration::from_millis(10),
            shared.clone(),
            2,
        );
        let dropped = shared.dropped_frames.load(Ordering::Relaxed);
        let stepped = inputs.len() / FRAME_SAMPLES;
        assert!(dropped > 20, "dropped {dropped}");
        assert_eq!(stepped as u64 + dropped, 60);
    }

    /// A speaker whose device got something other than what the pipeline queued (as when
    /// the device fills silence): it hands the device's version back as echo reference.
    struct DeviceSink {
        tx: Sender<moshid_hal::Frame>,
        rx: Receiver<moshid_hal::Frame>,
        spare: Option<Receiver<Vec<f32>>>,
    }
    impl Sink for DeviceSink {
        fn play(&mut self, s: &[f32]) -> Result<(), SoundError> {
            let mut buf = self
                .spare
                .as_ref()
                .and_then(|r| r.try_recv().ok())
                .unwrap_or_else(|| vec![0.0; FRAME_SAMPLES]);
            buf.fill(-s[0]);
            let _ = self.tx.send(moshid_hal::Frame {
                samples: buf,
                captured_at: Instant::now(),
            });
            Ok(())
        }
        fn echo_reference(&mut self) -> Option<EchoReference> {
            let (spare_tx, spare_rx) = bounded(16);
            self.spare = Some(spare_rx);
            Some(EchoReference {
                frames: self.rx.clone(),
                spare: spare_tx,
            })
        }
    }

    struct RecordFar(Arc<Mutex<Vec<f32>>>);
    impl EchoCancel for RecordFar {
        fn process(&mut self, far: &[f32], _near: &mut [f32]) {
            self.0.lock().unwrap().push(far[0]);
        }
    }

    #[test]
    fn canceller_gets_what_the_device_got() {
        let shared = Arc::new(Shared::new("v", 100, true));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let rec = seen.clone();
        let (tx, rx) = bounded(64);
        let p = Pipeline::start(
            Box::new(Scripted {
                n: 0,
                delay: Duration::ZERO,
                resets: Arc::new(Mutex::new(0)),
                inputs: Arc::new(Mutex::new(Vec::new())),
            }),
            // Input 0.2 -> the scripted model says 0.1 -> the device gets -0.1.
            Box::new(Synth::new(30, Duration::from_millis(5), 0.2)),
            Box::new(DeviceSink {
                tx,
                rx,
                spare: None,
            }),
            Some(Box::new(move || {
                Ok(Box::new(RecordFar(rec)) as Box<dyn EchoCancel>)
            })),
            shared,
            Vec::new(),
            Params {
                queue_frames: 30,
                idle_timeout: None,
            },
        )
        .unwrap();
        p.wait();
        let far = seen.lock().unwrap().clone();
        assert_eq!(far.len(), 30);
        // Silence until the device has played something, then the device's version only:
        // never the queued 0.1.
        assert!(far.iter().all(|&x| x == 0.0 || x == -0.1), "{far:?}");
        assert!(far.iter().filter(|&&x| x == -0.1).count() >= 20, "{far:?}");
    }
}
