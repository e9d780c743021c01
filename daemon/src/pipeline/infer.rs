//! The inference thread: one frame in, one frame out, each concern in its own method
//! (controls from the supervisor, conversation phase, input conditioning, the model step,
//! output, idle timeout).

use super::{Control, Event, EventTx, OutFrame, OutMsg, Params, Retired};
use crate::control::{Phase, Shared};
use crate::engine::{Engine, EngineError};
use crate::sound::{EchoCancel, EchoCancelFactory, EchoReference, InFrame, SoundError, Source};
use crossbeam_channel::{Receiver, Sender, TryRecvError};
use moshid_hal::FRAME_SAMPLES;
use moshid_models::wake::chime::Chime;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// User audio below this RMS counts as silence for the idle timeout (about -50 dBFS).
const SILENCE_RMS: f32 = 0.003;

/// Everything the inference thread owns, as `Pipeline::start` hands it over.
pub(super) struct Parts {
    pub engine: Box<dyn Engine>,
    pub control: Receiver<Control>,
    pub retired: Sender<Retired>,
    pub source: Box<dyn Source>,
    pub aec: Option<EchoCancelFactory>,
    pub far_ref: Option<EchoReference>,
    pub shared: Arc<Shared>,
    pub events: Vec<EventTx>,
    pub params: Params,
    pub out: Sender<OutMsg>,
    pub free: Receiver<Vec<f32>>,
}

/// What waiting for the next frame gave.
enum Next {
    Frame(InFrame),
    Nothing,
    End,
}

/// The model's place while the supervisor frees memory for the next one: silence.
struct NoModel;

impl Engine for NoModel {
    fn step(&mut self, _: &[f32], o: &mut [f32], _: &mut String) -> Result<(), EngineError> {
        o.fill(0.0);
        Ok(())
    }
    fn reset(&mut self) {}
    fn describe(&self) -> String {
        "no model (released for the next one)".into()
    }
}

struct InferLoop {
    p: Parts,
    aec: Option<Box<dyn EchoCancel>>,
    /// The echo reference for the next microphone frame.
    far: Vec<f32>,
    text: String,
    /// None until the first frame, so the initial phase is always published.
    in_conversation: Option<bool>,
    conv_start: Instant,
    last_voice: Instant,
    /// The wake-word listener (`[wake] enabled`).
    wake: Option<super::wake::Listener>,
    /// `set/wake OFF` paused the listener (it forgets what it heard once, when paused).
    wake_paused: bool,
    /// The chimes (`[wake] sounds`).
    sounds: Option<super::sounds::Sounds>,
}

/// Runs until stopped or the room's source ends; gives the model back.
pub(super) fn run(mut p: Parts, stop: &AtomicBool) -> Box<dyn Engine> {
    // Built here: cancellers need not be Send.
    let playback = p.far_ref.as_ref().and_then(|r| r.playback.clone());
    let aec = p.aec.take().and_then(|make| match make(playback.as_ref()) {
        Ok(a) => Some(a),
        Err(e) => {
            log::error!("echo cancellation disabled: {e}");
            None
        }
    });
    let wake = p.params.wake.as_ref().and_then(super::wake::Listener::new);
    let sounds = p.params.sounds.then(super::sounds::Sounds::new);
    let mut l = InferLoop {
        p,
        aec,
        far: vec![0.0; FRAME_SAMPLES],
        text: String::with_capacity(64),
        in_conversation: None,
        conv_start: Instant::now(),
        last_voice: Instant::now(),
        wake,
        wake_paused: false,
        sounds,
    };
    while !stop.load(Ordering::Relaxed) {
        l.apply_controls();
        match l.next_frame() {
            Next::Frame(mut f) => {
                let go_on = l.handle(&mut f);
                l.source().recycle(f);
                if !go_on {
                    break;
                }
            }
            Next::Nothing => {}
            Next::End => break,
        }
    }
    l.p.engine
}

impl InferLoop {
    fn emit(&self, ev: Event) {
        for tx in &self.p.events {
            if tx.try_send(ev.clone()).is_err() {
                self.p.shared.dropped_events.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// The room's microphone.
    fn source(&mut self) -> &mut dyn Source {
        self.p.source.as_mut()
    }

    /// Supervisor requests, between two frames.
    fn apply_controls(&mut self) {
        while let Ok(c) = self.p.control.try_recv() {
            match c {
                Control::Swap(e) => {
                    log::info!("model swapped in: {}", e.describe());
                    self.retire(e, None);
                }
                Control::Release { done } => self.retire(Box::new(NoModel), Some(done)),
                Control::Events(e) => self.p.events = e,
                Control::Chime(c) => self.chime(c),
            }
        }
    }

    /// Puts `next` in the model's place and sends the old one to the reaper.
    fn retire(&mut self, next: Box<dyn Engine>, done: Option<Sender<()>>) {
        let old = std::mem::replace(&mut self.p.engine, next);
        if let Err(e) = self.p.retired.send((old, done)) {
            super::retire_elsewhere(e.into_inner().0);
        }
        // A fresh conversation state with the new model (and a phase update).
        self.in_conversation = None;
    }

    /// Waits for the next frame of the active source (skipping a backlog).
    fn next_frame(&mut self) -> Next {
        let got = self.source().recv(Duration::from_millis(200));
        match got {
            Ok(Some(f)) => Next::Frame(self.skip_backlog(f)),
            // No heartbeat: a stalled device shows as no progress.
            Ok(None) => Next::Nothing,
            Err(SoundError::Ended) => {
                self.emit(Event::SourceEnded);
                Next::End
            }
            Err(e) => {
                log::error!("microphone failed: {e}");
                self.p.shared.set_error(&format!("microphone: {e}"));
                self.emit(Event::SourceEnded);
                Next::End
            }
        }
    }

    /// Behind real time: skip the oldest frames so latency stays bounded.
    fn skip_backlog(&mut self, mut frame: InFrame) -> InFrame {
        let limit = self.p.params.queue_frames;
        let shared = self.p.shared.clone();
        let src = self.source();
        // A file read as fast as the model goes has no real-time backlog to skip.
        while !src.is_batch() && src.backlog() >= limit {
            match src.recv(Duration::ZERO) {
                Ok(Some(newer)) => {
                    src.recycle(std::mem::replace(&mut frame, newer));
                    shared.dropped_frames.fetch_add(1, Ordering::Relaxed);
                }
                _ => break,
            }
        }
        frame
    }

    /// Processes one frame; false stops the loop.
    fn handle(&mut self, frame: &mut InFrame) -> bool {
        self.p.shared.beat();
        if frame.samples.len() != FRAME_SAMPLES {
            log::warn!(
                "source gave a frame of {} samples, expected {FRAME_SAMPLES}; skipped",
                frame.samples.len()
            );
            return true;
        }
        if !self.follow_conversation() {
            self.listen(&mut frame.samples);
            return self.play_sound_alone(frame.captured_at);
        }
        self.condition_input(&mut frame.samples);
        let mut out = match self.out_buffer() {
            Ok(Some(b)) => b,
            Ok(None) => {
                // Playback behind too: no free buffer means the output queue is full.
                self.p.shared.dropped_output.fetch_add(1, Ordering::Relaxed);
                self.far.fill(0.0);
                return true;
            }
            Err(()) => return false,
        };
        self.step(&frame.samples, &mut out) && self.deliver(out, frame.captured_at)
    }

    /// A free output buffer: at once in real time (None when the speaker is behind: the
    /// frame is dropped), or waiting for the speaker for a batch source (a file run must
    /// not lose a frame however slow the machine is). Err: the output thread is gone.
    fn out_buffer(&mut self) -> Result<Option<Vec<f32>>, ()> {
        if !self.source().is_batch() {
            return match self.p.free.try_recv() {
                Ok(b) => Ok(Some(b)),
                Err(TryRecvError::Empty) => Ok(None),
                Err(TryRecvError::Disconnected) => Err(()),
            };
        }
        // The output thread hands every buffer back, or ends (stop) and disconnects.
        self.p.free.recv().map(Some).map_err(|_| ())
    }

    /// Follows the `conversation` switch (and set/reset); false while there is none.
    fn follow_conversation(&mut self) -> bool {
        let s = &self.p.shared;
        let want = s.conversation.load(Ordering::Relaxed);
        // The conversation ends (idle timeout, set/conversation OFF); not a fresh start
        // after a model swap.
        let ended = self.in_conversation == Some(true) && !want;
        if Some(want) != self.in_conversation || s.reset_requested.swap(false, Ordering::Relaxed) {
            // Every conversation starts from a fresh model state.
            self.p.engine.reset();
            if let Some(w) = self.wake.as_mut() {
                w.reset();
            }
            self.in_conversation = Some(want);
            self.conv_start = Instant::now();
            self.last_voice = Instant::now();
            // Loading and error phases belong to the supervisor.
            if matches!(s.phase(), Phase::Idle | Phase::Conversation) {
                s.set_phase(if want {
                    Phase::Conversation
                } else {
                    Phase::Idle
                });
            }
        }
        if ended {
            self.chime(Chime::End);
        }
        want
    }

    /// While the room is idle: the wake word, heard on the echo-cancelled microphone, starts
    /// its conversation (as `set/conversation ON`).
    fn listen(&mut self, input: &mut [f32]) {
        if self.wake.is_none() {
            return;
        }
        if !self.p.shared.wake_on.load(Ordering::Relaxed) {
            // Switched off: what it heard before must not fire once it is back on.
            if !std::mem::replace(&mut self.wake_paused, true) {
                if let Some(w) = self.wake.as_mut() {
                    w.reset();
                }
            }
            return;
        }
        self.wake_paused = false;
        self.condition_input(input);
        let heard = self.wake.as_mut().and_then(|w| w.hear(input));
        if let Some(h) = heard {
            log::info!(probability = h.probability; "wake word heard: starting the conversation");
            self.p.shared.conversation.store(true, Ordering::Relaxed);
            self.emit(Event::Wake(h));
            self.chime(Chime::Wake);
        }
    }

    /// Starts a sound, when `[wake] sounds` is on.
    fn chime(&mut self, c: Chime) {
        if let Some(s) = self.sounds.as_mut() {
            log::debug!(sound = c.name(); "playing a sound");
            s.start(c);
        }
    }

    /// The level of what goes to the speaker, for the kiosk's speaking indicator.
    fn record_output(&self, out: &[f32]) {
        let rms = (out.iter().map(|x| x * x).sum::<f32>() / out.len().max(1) as f32).sqrt();
        self.p.shared.room.record_output_rms(rms);
    }

    /// The room's volume as a gain.
    fn gain(&self) -> f32 {
        self.p.shared.volume.load(Ordering::Relaxed) as f32 / 100.0
    }

    /// While idle nothing else goes to the speaker: a sound that plays goes out alone (the
    /// speaker fills the gaps between with silence). False stops the loop.
    fn play_sound_alone(&mut self, captured_at: Instant) -> bool {
        if self.p.far_ref.is_none() {
            // Without the device's reference, the far end is what was queued: nothing.
            self.far.fill(0.0);
        }
        if !self
            .sounds
            .as_ref()
            .is_some_and(super::sounds::Sounds::is_playing)
        {
            self.p.shared.room.record_output_rms(0.0);
            return true;
        }
        let mut out = match self.out_buffer() {
            Ok(Some(b)) => b,
            // The speaker is behind: the sound goes on with the next frame.
            Ok(None) => return true,
            Err(()) => return false,
        };
        out.fill(0.0);
        let gain = self.gain();
        if let Some(s) = self.sounds.as_mut() {
            s.mix(&mut out, gain);
        }
        self.record_output(&out);
        if self.p.far_ref.is_none() {
            self.far.copy_from_slice(&out);
        }
        let frame = OutFrame {
            samples: out,
            captured_at,
        };
        self.p.out.send(OutMsg::Frame(frame)).is_ok()
    }

    /// The model failed and the loop stops: the error sound still goes out whole (its
    /// frames wait for free buffers, at most 200 ms each), so the room hears that it did.
    fn play_out_error(&mut self) {
        self.chime(Chime::Error);
        let gain = self.gain();
        while let Some(s) = self.sounds.as_mut().filter(|s| s.is_playing()) {
            let Ok(mut out) = self.p.free.recv_timeout(Duration::from_millis(200)) else {
                return;
            };
            out.fill(0.0);
            s.mix(&mut out, gain);
            let frame = OutFrame {
                samples: out,
                captured_at: Instant::now(),
            };
            if self.p.out.send(OutMsg::Frame(frame)).is_err() {
                return;
            }
        }
    }

    /// Mute (the model hears silence) or echo cancellation, then the input level.
    fn condition_input(&mut self, input: &mut [f32]) {
        if self.p.shared.muted.load(Ordering::Relaxed) {
            input.fill(0.0);
        } else if let Some(aec) = self.aec.as_mut() {
            if let Some(r) = &self.p.far_ref {
                next_far(r, &mut self.far);
            }
            aec.process(&self.far, input);
        }
        let rms = (input.iter().map(|x| x * x).sum::<f32>() / FRAME_SAMPLES as f32).sqrt();
        self.p.shared.record_input_rms(rms);
        if rms > SILENCE_RMS {
            self.last_voice = Instant::now();
        }
    }

    /// One model step into `out`, at the current volume; false stops the loop.
    fn step(&mut self, input: &[f32], out: &mut [f32]) -> bool {
        let t0 = Instant::now();
        self.text.clear();
        if let Err(e) = self.p.engine.step(input, out, &mut self.text) {
            log::error!("{e}");
            self.p.shared.set_error(&e.to_string());
            self.play_out_error();
            return false;
        }
        self.p.shared.record_step(t0.elapsed().as_secs_f32());
        let gain = self.gain();
        for s in out.iter_mut() {
            *s = (*s * gain).clamp(-1.0, 1.0);
        }
        if let Some(s) = self.sounds.as_mut() {
            s.mix(out, gain);
        }
        self.record_output(out);
        if self.p.far_ref.is_none() {
            // Without the device's own reference, the far end is what was queued.
            self.far.copy_from_slice(out);
        }
        true
    }

    /// Sends the transcript piece and the frame on; ends an idle conversation.
    fn deliver(&mut self, out: Vec<f32>, captured_at: Instant) -> bool {
        if !self.text.is_empty() {
            let text = self.text.clone();
            self.emit(Event::Transcript {
                text,
                time: self.conv_start.elapsed().as_secs_f64(),
            });
        }
        let frame = OutFrame {
            samples: out,
            captured_at,
        };
        if self.p.out.send(OutMsg::Frame(frame)).is_err() {
            return false;
        }
        if let Some(t) = self.p.params.idle_timeout {
            if self.last_voice.elapsed() >= t {
                log::info!(idle_s = t.as_secs(); "no speech for the idle timeout: ending the conversation");
                self.p.shared.conversation.store(false, Ordering::Relaxed);
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
