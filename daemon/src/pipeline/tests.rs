//! The pipeline with scripted engines, sources and sinks.

use super::*;
use crate::control::Phase;
use crate::engine::EngineError;
use crate::sound::{EchoCancel, EchoReference, InFrame, Sink, SoundError, Source};
use moshid_hal::FRAME_SAMPLES;
use std::sync::Mutex;

/// The state as the supervisor leaves it for a running pipeline (a model is loaded).
fn ready(volume: u8, conversation: bool) -> Arc<Shared> {
    let s = Arc::new(Shared::new("v", volume, conversation));
    s.set_phase(Phase::Idle);
    s
}

/// Echoes its input at half amplitude and says "w<N>" every 5 steps; optionally slow.
struct Scripted {
    n: usize,
    delay: Duration,
    resets: Arc<Mutex<usize>>,
    inputs: Arc<Mutex<Vec<f32>>>,
}
impl Scripted {
    fn new(delay: Duration, inputs: Arc<Mutex<Vec<f32>>>) -> Scripted {
        Scripted {
            n: 0,
            delay,
            resets: Arc::new(Mutex::new(0)),
            inputs,
        }
    }
}
impl Engine for Scripted {
    fn step(&mut self, i: &[f32], o: &mut [f32], t: &mut String) -> Result<(), EngineError> {
        std::thread::sleep(self.delay);
        self.inputs.lock().unwrap().extend_from_slice(i);
        for (o, i) in o.iter_mut().zip(i) {
            *o = i * 0.5;
        }
        self.n += 1;
        if self.n.is_multiple_of(5) {
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

fn scripted() -> Scripted {
    Scripted::new(Duration::ZERO, Arc::default())
}

/// Frames from a channel: a remote client's, or constant ones from [`Frames::synth`].
struct Frames {
    rx: Receiver<InFrame>,
}
impl Frames {
    /// A source of constant frames, produced every `period` by its own thread.
    fn synth(frames: usize, period: Duration, value: f32) -> Frames {
        let (tx, rx) = bounded(64);
        std::thread::spawn(move || {
            for _ in 0..frames {
                let f = InFrame {
                    samples: vec![value; FRAME_SAMPLES],
                    captured_at: Instant::now(),
                };
                if tx.send(f).is_err() {
                    return;
                }
                std::thread::sleep(period);
            }
        });
        Frames { rx }
    }
}
impl Source for Frames {
    fn recv(&mut self, t: Duration) -> Result<Option<InFrame>, SoundError> {
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

/// A pipeline on the room endpoint `source` -> `sink`, without canceller or idle timeout.
fn start_room(
    engine: Box<dyn Engine>,
    source: Box<dyn Source>,
    sink: Box<dyn Sink>,
    shared: Arc<Shared>,
    events: Vec<EventTx>,
    queue_frames: usize,
) -> Pipeline {
    let params = Params {
        queue_frames,
        idle_timeout: None,
        wake: None,
        sounds: false,
    };
    Pipeline::start(
        engine,
        Endpoint::room(source, sink),
        None,
        shared,
        events,
        params,
    )
    .unwrap()
}

/// The events received so far.
fn drain(rx: &mut tokio::sync::mpsc::Receiver<Event>) -> Vec<Event> {
    let mut evs = Vec::new();
    while let Ok(e) = rx.try_recv() {
        evs.push(e);
    }
    evs
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
    let p = start_room(
        Box::new(Scripted::new(step, inputs.clone())),
        Box::new(Frames::synth(frames, period, 0.2)),
        Box::new(Collect(out.clone())),
        shared,
        vec![tx],
        queue_frames,
    );
    p.wait();
    let evs = drain(&mut rx);
    let o = out.lock().unwrap().clone();
    let i = inputs.lock().unwrap().clone();
    (o, i, evs)
}

#[test]
fn silence_ends_the_conversation_after_the_idle_timeout() {
    let shared = ready(100, true);
    let (tx, mut rx) = tokio::sync::mpsc::channel(1000);
    let p = Pipeline::start(
        Box::new(scripted()),
        // 40 silent frames, 5 ms apart: 200 ms of silence against a 60 ms timeout.
        Endpoint::room(
            Box::new(Frames::synth(40, Duration::from_millis(5), 0.0)),
            Box::new(Collect(Arc::new(Mutex::new(Vec::new())))),
        ),
        None,
        shared.clone(),
        vec![tx],
        Params {
            queue_frames: 30,
            idle_timeout: Some(Duration::from_millis(60)),
            wake: None,
            sounds: false,
        },
    )
    .unwrap();
    p.wait();
    let evs = drain(&mut rx);
    assert!(evs.contains(&Event::IdleTimeout), "{evs:?}");
    assert!(!shared.conversation.load(Ordering::Relaxed));
    assert_eq!(shared.phase(), Phase::Idle);
    let steps = shared.steps.load(Ordering::Relaxed);
    assert!((5..40).contains(&steps), "{steps} steps");
}

#[test]
fn conversation_plays_model_audio_and_emits_text() {
    let shared = ready(100, true);
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
    let shared = ready(50, true);
    shared.muted.store(true, Ordering::Relaxed);
    let (out, inputs, _) = run(5, Duration::from_millis(2), Duration::ZERO, shared, 30);
    assert!(!inputs.is_empty() && inputs.iter().all(|&x| x == 0.0));
    assert!(out.iter().all(|&x| x == 0.0));
}

#[test]
fn idle_when_conversation_off() {
    let shared = ready(100, false);
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
    let shared = ready(100, true);
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

/// [`Frames::synth`] as a file read as fast as the model goes.
struct Batch(Frames);
impl Source for Batch {
    fn recv(&mut self, t: Duration) -> Result<Option<InFrame>, SoundError> {
        self.0.recv(t)
    }
    fn backlog(&self) -> usize {
        self.0.backlog()
    }
    fn is_batch(&self) -> bool {
        true
    }
}

/// A speaker slower than everything else (a starved playback thread, a slow disk).
struct SlowSink(Arc<Mutex<Vec<f32>>>, Duration);
impl Sink for SlowSink {
    fn play(&mut self, s: &[f32]) -> Result<(), SoundError> {
        std::thread::sleep(self.1);
        self.0.lock().unwrap().extend_from_slice(s);
        Ok(())
    }
}

/// `run` with a batch source, a slow sink and a slow or fast engine: what came out.
fn run_batch(frames: usize, step: Duration, sink: Duration, shared: Arc<Shared>) -> Vec<f32> {
    let out = Arc::new(Mutex::new(Vec::new()));
    let p = start_room(
        Box::new(Scripted::new(step, Arc::default())),
        Box::new(Batch(Frames::synth(frames, Duration::ZERO, 0.2))),
        Box::new(SlowSink(out.clone(), sink)),
        shared,
        vec![],
        1,
    );
    p.wait();
    let o = out.lock().unwrap().clone();
    o
}

#[test]
fn a_batch_run_loses_no_frame_however_slow_the_speaker_or_the_model() {
    // The flaky `demo --fast` under load: the playback thread starved of CPU fell behind
    // the model, and frames went to the real-time drop path. Here the speaker is always
    // the slowest (5 ms a frame against an instant model): every frame must arrive.
    let shared = ready(100, true);
    let out = run_batch(40, Duration::ZERO, Duration::from_millis(5), shared.clone());
    assert_eq!(out.len(), 40 * FRAME_SAMPLES, "frames lost");
    assert_eq!(shared.dropped_output.load(Ordering::Relaxed), 0);
    // And a model slower than the input (the source is read at once): nothing skipped.
    let shared = ready(100, true);
    let out = run_batch(20, Duration::from_millis(5), Duration::ZERO, shared.clone());
    assert_eq!(out.len(), 20 * FRAME_SAMPLES, "frames skipped");
    assert_eq!(shared.dropped_frames.load(Ordering::Relaxed), 0);
}

#[test]
fn a_real_time_run_drops_output_when_the_speaker_is_behind() {
    // The same slow speaker with a real-time source: latency wins, frames are dropped.
    let shared = ready(100, true);
    let out = Arc::new(Mutex::new(Vec::new()));
    let p = start_room(
        Box::new(scripted()),
        Box::new(Frames::synth(40, Duration::from_millis(1), 0.2)),
        Box::new(SlowSink(out.clone(), Duration::from_millis(5))),
        shared.clone(),
        vec![],
        3,
    );
    p.wait();
    let dropped = shared.dropped_output.load(Ordering::Relaxed) as usize;
    let skipped = shared.dropped_frames.load(Ordering::Relaxed) as usize;
    assert!(dropped > 0, "nothing dropped");
    assert_eq!(
        out.lock().unwrap().len() / FRAME_SAMPLES + dropped + skipped,
        40
    );
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
            playback: None,
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
    let shared = ready(100, true);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let rec = seen.clone();
    let (tx, rx) = bounded(64);
    let p = Pipeline::start(
        Box::new(scripted()),
        // Input 0.2 -> the scripted model says 0.1 -> the device gets -0.1.
        Endpoint::room(
            Box::new(Frames::synth(30, Duration::from_millis(5), 0.2)),
            Box::new(DeviceSink {
                tx,
                rx,
                spare: None,
            }),
        ),
        Some(Box::new(move |_| {
            Ok(Box::new(RecordFar(rec)) as Box<dyn EchoCancel>)
        })),
        shared,
        Vec::new(),
        Params {
            queue_frames: 30,
            idle_timeout: None,
            wake: None,
            sounds: false,
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

/// An engine that says which thread dropped it.
struct Tracked {
    inner: Scripted,
    dropped_on: Arc<Mutex<Option<String>>>,
}
impl Engine for Tracked {
    fn step(&mut self, i: &[f32], o: &mut [f32], t: &mut String) -> Result<(), EngineError> {
        self.inner.step(i, o, t)
    }
    fn reset(&mut self) {}
    fn describe(&self) -> String {
        "tracked".into()
    }
}
impl Drop for Tracked {
    fn drop(&mut self) {
        let name = std::thread::current().name().map(str::to_string);
        *self.dropped_on.lock().unwrap() = name;
    }
}

#[test]
fn swapped_and_released_models_are_dropped_off_the_realtime_thread() {
    let shared = ready(100, true);
    let dropped_on = Arc::new(Mutex::new(None));
    let p = start_room(
        Box::new(Tracked {
            inner: scripted(),
            dropped_on: dropped_on.clone(),
        }),
        Box::new(Frames::synth(200, Duration::from_millis(5), 0.2)),
        Box::new(Collect(Arc::default())),
        shared.clone(),
        Vec::new(),
        30,
    );
    let second = Arc::new(Mutex::new(None));
    p.swap_engine(Box::new(Tracked {
        inner: scripted(),
        dropped_on: second.clone(),
    }));
    let waited = Instant::now();
    while dropped_on.lock().unwrap().is_none() && waited.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(dropped_on.lock().unwrap().as_deref(), Some("moshid-reaper"));
    // Release: returns once the model's memory is free, dropped by the reaper too.
    assert!(p.releaser().release(Duration::from_secs(5)));
    assert_eq!(second.lock().unwrap().as_deref(), Some("moshid-reaper"));
    // The pipeline keeps running without a model (silence) and gives back the placeholder.
    let engine = p
        .stop(Duration::from_secs(2))
        .expect("the model comes back");
    assert!(
        engine.describe().contains("no model"),
        "{}",
        engine.describe()
    );
}

/// A pipeline on `frames` constant frames 5 ms apart into a collecting sink, with sounds on
/// or off and an optional idle timeout; returns the handle and what the speaker got.
fn with_sounds(
    engine: Box<dyn Engine>,
    shared: Arc<Shared>,
    frames: usize,
    sounds: bool,
    idle_timeout: Option<Duration>,
) -> (Pipeline, Arc<Mutex<Vec<f32>>>) {
    let out = Arc::new(Mutex::new(Vec::new()));
    let p = Pipeline::start(
        engine,
        Endpoint::room(
            Box::new(Frames::synth(frames, Duration::from_millis(5), 0.0)),
            Box::new(Collect(out.clone())),
        ),
        None,
        shared,
        Vec::new(),
        Params {
            queue_frames: 30,
            idle_timeout,
            wake: None,
            sounds,
        },
    )
    .unwrap();
    (p, out)
}

/// `got` from its first frame that is not silent.
fn from_first_sound(got: &[f32]) -> Vec<f32> {
    let k = got
        .chunks(FRAME_SAMPLES)
        .position(|f| f.iter().any(|&x| x != 0.0))
        .expect("a sound was played");
    got[k * FRAME_SAMPLES..].to_vec()
}

use moshid_models::wake::chime::{render, Chime};

#[test]
fn a_sound_plays_alone_while_idle_at_the_rooms_volume() {
    let shared = ready(50, false);
    let (p, out) = with_sounds(Box::new(scripted()), shared, 20, true, None);
    p.chime(Chime::Error);
    p.wait();
    let got = out.lock().unwrap().clone();
    let want = render(Chime::Error, 24_000);
    assert_eq!(
        got.len(),
        want.len().div_ceil(FRAME_SAMPLES) * FRAME_SAMPLES
    );
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(*g, w * 0.5);
    }
}

#[test]
fn the_end_of_a_conversation_chimes_unless_sounds_are_off() {
    for sounds in [true, false] {
        let shared = ready(100, true);
        // Silence: the scripted model answers zeros; the 60 ms idle timeout ends it.
        let timeout = Some(Duration::from_millis(60));
        let (p, out) = with_sounds(Box::new(scripted()), shared.clone(), 40, sounds, timeout);
        p.wait();
        assert_eq!(shared.phase(), Phase::Idle);
        let got = out.lock().unwrap().clone();
        if !sounds {
            assert!(got.iter().all(|&x| x == 0.0), "a sound with sounds off");
            continue;
        }
        let want = render(Chime::End, 24_000);
        let got = from_first_sound(&got);
        assert!(got.len() >= want.len(), "the end chime was cut");
        assert_eq!(&got[..want.len()], &want[..]);
    }
}

/// Fails at its first step.
struct Failing;
impl Engine for Failing {
    fn step(&mut self, _: &[f32], _: &mut [f32], _: &mut String) -> Result<(), EngineError> {
        Err(EngineError("the model broke".into()))
    }
    fn reset(&mut self) {}
    fn describe(&self) -> String {
        "failing".into()
    }
}

#[test]
fn a_failing_model_plays_the_error_sound_before_the_loop_stops() {
    let shared = ready(100, true);
    let (p, out) = with_sounds(Box::new(Failing), shared.clone(), 20, true, None);
    p.wait();
    assert_eq!(shared.phase(), Phase::Error);
    let want = render(Chime::Error, 24_000);
    let got = out.lock().unwrap().clone();
    assert_eq!(&got[..want.len()], &want[..]);
}
