//! The appliance's [`Backend`]: a web session becomes a remote [`Endpoint`] that takes the
//! conversation from the room through the supervisor (`Event::TakeOver`); the room's
//! microphone and speaker pause (devices open) and resume when the session's source ends.
//! The supervisor owns the pipeline: this side only sends it events. Mute, volume and
//! voice are the supervisor's commands; the text comes back from the pipeline's transcript
//! events.

use super::backend::{Backend, Control, DeviceState, ModelInfo, Talk};
use super::local::sampling_override;
use super::params::SessionSampling;
use crate::control::{Command, Phase, Shared};
use crate::endpoint::Endpoint;
use crate::pipeline::{Event as PipelineEvent, EventTx};
use crate::service::Event;
use crate::sound::{InFrame, Sink, SoundError, Source};
use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender, TrySendError};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

/// Why a session ends when the device takes the conversation back.
const ENDED_ON_DEVICE: &str = "the conversation was ended on the device";

/// How long a step waits for the pipeline's reply before it answers silence (the reply
/// then is dropped when it comes: the session stays in step with the pipeline).
const REPLY_WAIT: Duration = Duration::from_millis(500);

/// Where the current session's text and end go.
#[derive(Default)]
struct Current {
    name: String,
    text: Option<mpsc::Sender<String>>,
    ended: Option<Arc<AtomicBool>>,
}

/// The web endpoint's view of the supervisor.
pub struct SupervisorBackend {
    tx: Mutex<mpsc::Sender<Event>>,
    shared: Arc<Shared>,
    info: Arc<Mutex<ModelInfo>>,
    voices: Vec<String>,
    current: Arc<Mutex<Current>>,
}

impl SupervisorBackend {
    /// A backend sending to the supervisor's channel; `info` is kept up to date by the
    /// supervisor (the loaded model's files). Returns it and the event queue the pipeline
    /// must send its transcripts and endpoint ends to.
    pub fn new(
        tx: mpsc::Sender<Event>,
        shared: Arc<Shared>,
        info: Arc<Mutex<ModelInfo>>,
        voices: Vec<String>,
    ) -> std::io::Result<(SupervisorBackend, EventTx)> {
        let (etx, mut erx) = tokio::sync::mpsc::channel::<PipelineEvent>(256);
        let current = Arc::new(Mutex::new(Current::default()));
        let c = current.clone();
        std::thread::Builder::new()
            .name("moshid-web-events".into())
            .spawn(move || {
                while let Some(ev) = erx.blocking_recv() {
                    route_event(&c, ev);
                }
            })?;
        let b = SupervisorBackend {
            tx: Mutex::new(tx),
            shared,
            info,
            voices,
            current,
        };
        Ok((b, etx))
    }

    fn send(&self, ev: Event) -> Result<(), String> {
        let tx = self.tx.lock().map_err(|_| "the supervisor is gone")?;
        tx.send(ev)
            .map_err(|_| "the supervisor is gone".to_string())
    }

    /// Refuses a session while there is no model to talk to.
    fn ready(&self) -> Result<(), String> {
        match self.shared.phase() {
            Phase::Idle | Phase::Conversation => Ok(()),
            Phase::Loading => Err("the model is loading: try again in a moment".into()),
            Phase::Error => Err(format!(
                "the device has a problem: {}",
                self.shared.snapshot().error.unwrap_or_default()
            )),
            Phase::Stopped => Err("the device is stopping".into()),
        }
    }
}

/// Text goes to the session holding the conversation; its end marks it ended.
fn route_event(current: &Mutex<Current>, ev: PipelineEvent) {
    let Ok(c) = current.lock() else { return };
    match ev {
        PipelineEvent::Transcript { text, .. } => {
            if let Some(t) = &c.text {
                let _ = t.send(text);
            }
        }
        PipelineEvent::EndpointEnded { name } if name == c.name => {
            if let Some(e) = &c.ended {
                e.store(true, Ordering::Relaxed);
            }
        }
        _ => {}
    }
}

impl Backend for SupervisorBackend {
    fn model_info(&self) -> ModelInfo {
        self.info.lock().map(|i| i.clone()).unwrap_or_default()
    }

    fn open(&self, peer: SocketAddr, s: SessionSampling) -> Result<Box<dyn Talk>, String> {
        self.ready()?;
        let name = format!("web {peer}");
        let (in_tx, in_rx) = bounded::<InFrame>(4);
        let (out_tx, out_rx) = bounded::<Vec<f32>>(8);
        let (text_tx, text_rx) = mpsc::channel();
        let ended = Arc::new(AtomicBool::new(false));
        if let Ok(mut c) = self.current.lock() {
            *c = Current {
                name: name.clone(),
                text: Some(text_tx),
                ended: Some(ended.clone()),
            };
        }
        let mut ep = Endpoint::remote(
            name,
            Box::new(WebSource { rx: in_rx }),
            Box::new(WebSink { tx: out_tx }),
        );
        ep.sampling = Some(sampling_override(&s));
        self.send(Event::TakeOver(ep))?;
        Ok(Box::new(RemoteTalk {
            in_tx,
            out_rx,
            text_rx,
            ended,
            shared: self.shared.clone(),
        }))
    }

    fn state(&self) -> DeviceState {
        let step_ms = self.shared.step_stats.figures().mean_ms;
        DeviceState::Appliance {
            snapshot: self.shared.snapshot(),
            voices: self.voices.clone(),
            step_ms: (step_ms * 10.0).round() / 10.0,
        }
    }

    fn control(&self, c: Control) -> Result<(), String> {
        let cmd = match c {
            Control::Mute(m) => Command::Mute(m),
            Control::Volume(v) => Command::Volume(v.min(100)),
            Control::Voice(v) if self.voices.contains(&v) => Command::Voice(v),
            Control::Voice(v) => return Err(format!("unknown voice {v:?}")),
        };
        self.send(Event::Command(cmd))
    }

    fn room(&self, since: u64) -> Option<crate::room::RoomView> {
        Some(self.shared.room.view(since))
    }

    fn room_conversation(&self, on: bool) -> Result<(), String> {
        self.send(Event::Command(Command::Conversation(on)))
    }

    fn count_dropped(&self, input: u64, output: u64) {
        let s = &self.shared;
        s.web_dropped_input.fetch_add(input, Ordering::Relaxed);
        s.web_dropped_output.fetch_add(output, Ordering::Relaxed);
    }
}

/// The session's frames as the pipeline's source: its clock drives the model.
struct WebSource {
    rx: Receiver<InFrame>,
}

impl Source for WebSource {
    fn recv(&mut self, timeout: Duration) -> Result<Option<InFrame>, SoundError> {
        match self.rx.recv_timeout(timeout) {
            Ok(f) => Ok(Some(f)),
            Err(RecvTimeoutError::Timeout) => Ok(None),
            Err(RecvTimeoutError::Disconnected) => Err(SoundError::Ended),
        }
    }
    fn backlog(&self) -> usize {
        self.rx.len()
    }
}

/// Moshi's frames for the session; never blocks the pipeline (a full queue drops).
struct WebSink {
    tx: Sender<Vec<f32>>,
}

impl Sink for WebSink {
    fn play(&mut self, samples: &[f32]) -> Result<(), SoundError> {
        match self.tx.try_send(samples.to_vec()) {
            Ok(()) | Err(TrySendError::Full(_)) => Ok(()),
            Err(TrySendError::Disconnected(_)) => {
                Err(SoundError::Device("the web client left".into()))
            }
        }
    }
}

/// A session's hold on the conversation. Dropping it drops the source's sender: the
/// pipeline sees the source end and gives the conversation back to the room.
struct RemoteTalk {
    in_tx: Sender<InFrame>,
    out_rx: Receiver<Vec<f32>>,
    text_rx: mpsc::Receiver<String>,
    ended: Arc<AtomicBool>,
    shared: Arc<Shared>,
}

impl Talk for RemoteTalk {
    fn step(&mut self, input: &[f32], output: &mut [f32], text: &mut String) -> Result<(), String> {
        let frame = InFrame {
            samples: input.to_vec(),
            captured_at: Instant::now(),
        };
        // Disconnected: the pipeline dropped the endpoint (set/conversation OFF, a restart).
        if self
            .in_tx
            .send_timeout(frame, Duration::from_secs(1))
            .is_err()
        {
            return Err(ENDED_ON_DEVICE.into());
        }
        match self.out_rx.recv_timeout(REPLY_WAIT) {
            Ok(mut f) => {
                // Replies that came late: keep the newest so the session stays in step.
                while let Ok(newer) = self.out_rx.try_recv() {
                    f = newer;
                    self.shared
                        .web_dropped_output
                        .fetch_add(1, Ordering::Relaxed);
                }
                if f.len() == output.len() {
                    output.copy_from_slice(&f);
                } else {
                    output.fill(0.0);
                }
            }
            Err(RecvTimeoutError::Timeout) => output.fill(0.0),
            Err(RecvTimeoutError::Disconnected) => return Err(ENDED_ON_DEVICE.into()),
        }
        while let Ok(t) = self.text_rx.try_recv() {
            text.push_str(&t);
        }
        Ok(())
    }

    fn ended(&self) -> Option<String> {
        self.ended
            .load(Ordering::Relaxed)
            .then(|| ENDED_ON_DEVICE.to_string())
    }
}
