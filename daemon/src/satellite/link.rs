//! The satellite's link to its brain, on its own thread: opens a `/api/chat` session when
//! the room's conversation sends frames, relays them as Opus and the replies back, and
//! closes it when the conversation resets or stops. Every wait is bounded and nothing here
//! is waited for by the room's loop: frames come and replies go through bounded channels.
//!
//! Faults (unreachable, refused token, foreign certificate, busy, a session that breaks or
//! answers garbage): the state says `error` with the brain's URL and the reason, `error` on
//! MQTT says it once per outage, and the link retries, next URL first, with a backoff once
//! every URL failed. When a brain answers again the error clears, and a conversation that
//! was on goes on in a new session.

use super::{Down, LinkState, UpFrame};
use crate::config::BrainUrl;
use crate::control::{Phase, Shared};
use crate::web::chat_client::{await_handshake, ChatSocket, ChatTarget};
use crate::web::protocol::Kind;
use crate::web::stream::{AudioIn, AudioOut};
use futures_util::{SinkExt, StreamExt};
use moshid_hal::FRAME_SAMPLES;
use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc::Receiver;
use tokio_tungstenite::tungstenite::Message;

/// First wait after every URL failed; doubles up to [`LAST_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const LAST_BACKOFF: Duration = Duration::from_secs(8);
/// No frame from the room for this long: the conversation is over, the session closes.
const IDLE_END: Duration = Duration::from_secs(1);
/// The first probe waits this long after the start, so that the supervisor's first state
/// and the MQTT connection are there to carry what it finds.
const START_GRACE: Duration = Duration::from_secs(1);
/// A send that the brain does not take within this is a dead brain.
const SEND_TIMEOUT: Duration = Duration::from_secs(2);

/// Says a fault on MQTT `error` (once per outage).
pub type Report = Box<dyn Fn(&str) + Send>;

/// Everything the link thread owns.
pub struct Link {
    /// The brains, in order.
    pub urls: Vec<BrainUrl>,
    /// Sent as `?token=`.
    pub token: Option<String>,
    /// For `wss://` (the pinned certificate, or any with `insecure`).
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Connect + handshake, and the longest a live session may go without audio back.
    pub timeout: Duration,
    /// `[sampling]` as Kyutai's query parameters.
    pub base_sampling: Vec<(&'static str, String)>,
    /// Shared with the engine: the conversation count and its sampling.
    pub state: Arc<LinkState>,
    /// The daemon's state (error, phase, status).
    pub shared: Arc<Shared>,
    /// MQTT `error`, once per outage.
    pub report: Report,
    /// Frames from the room's conversation.
    pub up: Receiver<UpFrame>,
    /// Replies, text and session news to the engine.
    pub down: crossbeam_channel::Sender<Down>,
}

/// How a session ended.
enum End {
    /// The conversation stopped or reset (a frame of the next one, if it came).
    Over(Option<UpFrame>),
    /// The brain failed.
    Fault(String),
    /// The engine is gone.
    Stop,
}

/// What the room asked for while we waited.
enum Demand {
    Frame(UpFrame),
    Nothing,
    Stop,
}

/// The fault episode and the URL rotation.
struct Retry {
    current: usize,
    failures: u32,
    backoff: Duration,
    outage: Option<String>,
    /// The first probe was made (once the room's loop runs).
    probed: bool,
    /// A brain answered at least once.
    answered: bool,
}

impl Link {
    /// Runs until the engine is dropped.
    pub async fn run(mut self) {
        let mut r = Retry {
            current: 0,
            failures: 0,
            backoff: FIRST_BACKOFF,
            outage: None,
            probed: false,
            answered: false,
        };
        // A brain is probed once at the start (an unreachable one shows at once, not at the
        // first conversation), after a grace: a fault said earlier would be overwritten by
        // the supervisor's first `idle`, and MQTT may not be connected yet.
        let started = tokio::time::Instant::now();
        let mut probe = false;
        let mut pending: Option<UpFrame> = None;
        loop {
            if !r.probed && started.elapsed() >= START_GRACE {
                r.probed = true;
                probe = pending.is_none();
            }
            if pending.is_none() && !probe {
                match self.wait_frame(Duration::from_millis(200)).await {
                    Demand::Frame(f) => pending = Some(f),
                    Demand::Nothing => continue,
                    Demand::Stop => return,
                }
            }
            let url = self.urls[r.current].clone();
            let opened = self.open(&url).await;
            let ws = match opened {
                Ok(ws) => ws,
                Err(why) => {
                    self.fault(&mut r, &url, why);
                    match self.after_failure(&mut r, pending.take()).await {
                        Demand::Frame(f) => pending = Some(f),
                        Demand::Nothing => {}
                        Demand::Stop => return,
                    }
                    probe = pending.is_none();
                    continue;
                }
            };
            self.recovered(&mut r, &url, pending.is_some());
            probe = false;
            let Some(first) = pending.take() else {
                let mut ws = ws;
                let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(None)).await;
                continue;
            };
            match self.converse(ws, first, &url).await {
                End::Over(next) => pending = next,
                End::Stop => return,
                End::Fault(why) => {
                    let _ = self.down.try_send(Down::Lost);
                    self.fault(&mut r, &url, why);
                    match self.after_failure(&mut r, None).await {
                        Demand::Frame(f) => pending = Some(f),
                        Demand::Nothing => probe = true,
                        Demand::Stop => return,
                    }
                }
            }
        }
    }

    /// The next frame of the current conversation, waiting at most `wait`.
    async fn wait_frame(&mut self, wait: Duration) -> Demand {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(deadline, self.up.recv()).await {
                Err(_) => return Demand::Nothing,
                Ok(None) => return Demand::Stop,
                Ok(Some(f)) if f.gen == self.state.generation.load(Ordering::Relaxed) => {
                    return Demand::Frame(f)
                }
                Ok(Some(_)) => {}
            }
        }
    }

    /// Next URL first; once every URL failed in a row, waits the backoff (keeping the newest
    /// frame of the conversation, which asks for a session when the wait is over).
    async fn after_failure(&mut self, r: &mut Retry, mut newest: Option<UpFrame>) -> Demand {
        r.failures += 1;
        r.current = (r.current + 1) % self.urls.len();
        if !(r.failures as usize).is_multiple_of(self.urls.len()) {
            return newest.map_or(Demand::Nothing, Demand::Frame);
        }
        let until = tokio::time::Instant::now() + r.backoff;
        r.backoff = (r.backoff * 2).min(LAST_BACKOFF);
        while tokio::time::Instant::now() < until {
            match self.wait_frame(until - tokio::time::Instant::now()).await {
                Demand::Frame(f) => newest = Some(f),
                Demand::Nothing => break,
                Demand::Stop => return Demand::Stop,
            }
        }
        newest.map_or(Demand::Nothing, Demand::Frame)
    }

    /// Connects to `url` and waits for its handshake.
    async fn open(&self, url: &BrainUrl) -> Result<ChatSocket, String> {
        let mut query: Vec<(&str, String)> = Vec::new();
        if let Some(t) = &self.token {
            query.push(("token", t.clone()));
        }
        query.extend(self.sampling());
        let target = ChatTarget::new(&url.to_string(), &query, self.tls.clone())
            .map_err(|e| e.to_string())?;
        let mut ws = target
            .connect(self.timeout)
            .await
            .map_err(|e| e.to_string())?;
        await_handshake(&mut ws, self.timeout)
            .await
            .map_err(|e| e.to_string())?;
        Ok(ws)
    }

    /// `[sampling]`, with what the conversation asked for (a web session) on top.
    fn sampling(&self) -> Vec<(&'static str, String)> {
        let o = self.state.sampling();
        let mut q = self.base_sampling.clone();
        let mut set = |k: &'static str, v: Option<String>| {
            if let (Some(v), Some(e)) = (v, q.iter_mut().find(|(n, _)| *n == k)) {
                e.1 = v;
            }
        };
        set("text_temperature", o.temp_text.map(|v| v.to_string()));
        set("audio_temperature", o.temp_audio.map(|v| v.to_string()));
        set("text_topk", o.top_k_text.map(|v| v.to_string()));
        set("audio_topk", o.top_k_audio.map(|v| v.to_string()));
        set("text_seed", o.seed.map(|v| v.to_string()));
        set("audio_seed", o.seed.map(|v| v.to_string()));
        q
    }

    fn fault(&self, r: &mut Retry, url: &BrainUrl, why: String) {
        let msg = format!("brain {url}: {why}");
        log::warn!(brain = url.to_string().as_str(); "{msg}");
        self.shared.set_error(&msg);
        self.shared
            .set_status(&format!("error: {msg} (retrying, next brain first)"));
        if r.outage.is_none() {
            (self.report)(&msg);
        }
        r.outage = Some(msg);
    }

    /// A brain answered: the outage (if any) is over. Only the error this link set is
    /// cleared: another part's (a microphone that failed) stays.
    fn recovered(&self, r: &mut Retry, url: &BrainUrl, conversation: bool) {
        r.failures = 0;
        r.backoff = FIRST_BACKOFF;
        let first = !std::mem::replace(&mut r.answered, true);
        let Some(ours) = r.outage.take() else {
            if first {
                log::info!(brain = url.to_string().as_str(); "the brain {url} answers");
            }
            return;
        };
        log::info!(brain = url.to_string().as_str(); "the brain {url} answers again");
        if self.shared.snapshot().error.as_deref() != Some(ours.as_str()) {
            return;
        }
        self.shared.clear_error();
        // The room's switch: the first answer after a fault may be a probe, with no frame.
        let conversation = conversation || self.shared.conversation.load(Ordering::Relaxed);
        if self.shared.phase() == Phase::Error {
            self.shared.set_phase(if conversation {
                Phase::Conversation
            } else {
                Phase::Idle
            });
        }
        self.shared
            .set_status(&format!("satellite: brain {url} answers again"));
    }

    /// One session: frames up as Opus, replies down, until the conversation ends or the
    /// brain fails.
    async fn converse(&mut self, mut ws: ChatSocket, first: UpFrame, url: &BrainUrl) -> End {
        let gen = first.gen;
        // What queued while we connected is stale: the session starts with the newest frame,
        // so that its replies are not late from the first one on.
        let mut first = first;
        while let Ok(f) = self.up.try_recv() {
            if f.gen != gen {
                return End::Over(Some(f));
            }
            first = f;
        }
        let mut s = match Session::new(gen) {
            Ok(s) => s,
            Err(e) => return End::Fault(e),
        };
        let _ = self.down.try_send(Down::Live {
            gen,
            first: first.seq,
        });
        if let Err(e) = s.send(&mut ws, first).await {
            return End::Fault(e);
        }
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        let end = loop {
            tokio::select! {
                f = self.up.recv() => match f {
                    None => break End::Stop,
                    Some(f) if f.gen != gen => break End::Over(Some(f)),
                    Some(f) => if let Err(e) = s.send(&mut ws, f).await { break End::Fault(e) },
                },
                m = ws.next() => if let Err(e) = s.receive(m, &self.down) { break End::Fault(e) },
                _ = tick.tick() => {
                    if self.state.generation.load(Ordering::Relaxed) != gen
                        || s.last_frame.elapsed() >= IDLE_END {
                        break End::Over(None);
                    }
                    if s.last_reply.elapsed() >= self.timeout {
                        break End::Fault(format!(
                            "no audio back for {} s (the brain stalled or answers something else)",
                            self.timeout.as_secs()
                        ));
                    }
                }
            }
        };
        if !matches!(end, End::Fault(_)) {
            let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(None)).await;
        }
        s.log_end(url);
        end
    }
}

/// One session's codec state and figures.
struct Session {
    gen: u64,
    out: AudioOut,
    input: AudioIn,
    /// Steps of the frames sent whose replies are owed, oldest first.
    owed: VecDeque<u64>,
    message: Vec<u8>,
    frame: Vec<f32>,
    started: Instant,
    last_frame: Instant,
    last_reply: Instant,
    bytes_up: u64,
    bytes_down: u64,
    frames_up: u64,
    replies: u64,
}

impl Session {
    fn new(gen: u64) -> Result<Session, String> {
        Ok(Session {
            gen,
            out: AudioOut::new().map_err(|e| e.to_string())?,
            input: AudioIn::new().map_err(|e| e.to_string())?,
            owed: VecDeque::with_capacity(16),
            message: Vec::with_capacity(512),
            frame: vec![0.0; FRAME_SAMPLES],
            started: Instant::now(),
            last_frame: Instant::now(),
            last_reply: Instant::now(),
            bytes_up: 0,
            bytes_down: 0,
            frames_up: 0,
            replies: 0,
        })
    }

    async fn send(&mut self, ws: &mut ChatSocket, f: UpFrame) -> Result<(), String> {
        self.message.clear();
        self.message.push(Kind::Audio as u8);
        self.out
            .frame(&f.samples, &mut self.message)
            .map_err(|e| format!("cannot encode: {e}"))?;
        self.bytes_up += self.message.len() as u64;
        let msg = Message::Binary(self.message.clone().into());
        match tokio::time::timeout(SEND_TIMEOUT, ws.send(msg)).await {
            Err(_) => return Err("the brain does not take our audio (send timed out)".into()),
            Ok(Err(e)) => return Err(format!("the connection broke: {e}")),
            Ok(Ok(())) => {}
        }
        if self.owed.is_empty() {
            self.last_reply = Instant::now();
        }
        self.owed.push_back(f.seq);
        self.frames_up += 1;
        self.last_frame = Instant::now();
        Ok(())
    }

    fn receive(
        &mut self,
        m: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>,
        down: &crossbeam_channel::Sender<Down>,
    ) -> Result<(), String> {
        let b = match m {
            None | Some(Ok(Message::Close(_))) => return Err("the brain closed the session".into()),
            Some(Err(e)) => return Err(format!("the connection broke: {e}")),
            Some(Ok(Message::Binary(b))) => b,
            Some(Ok(_)) => return Ok(()),
        };
        self.bytes_down += b.len() as u64;
        match Kind::of(&b) {
            Some(Kind::Audio) => self.audio(&b[1..], down),
            Some(Kind::Text) => {
                let text = String::from_utf8_lossy(&b[1..]).into_owned();
                let _ = down.try_send(Down::Text {
                    gen: self.gen,
                    text,
                });
                Ok(())
            }
            Some(Kind::ColoredText) if b.len() > 1 => {
                let text = String::from_utf8_lossy(&b[2..]).into_owned();
                let _ = down.try_send(Down::Text {
                    gen: self.gen,
                    text,
                });
                Ok(())
            }
            Some(Kind::Error) => Err(format!(
                "the brain said: {}",
                String::from_utf8_lossy(&b[1..])
            )),
            // Handshake, metadata, control, ping, and kinds we do not know: discarded.
            _ => Ok(()),
        }
    }

    fn audio(
        &mut self,
        payload: &[u8],
        down: &crossbeam_channel::Sender<Down>,
    ) -> Result<(), String> {
        self.input
            .push(payload)
            .map_err(|e| format!("the brain sent audio that cannot be decoded: {e}"))?;
        while self.input.next_frame(&mut self.frame) {
            self.last_reply = Instant::now();
            self.replies += 1;
            // A reply beyond the frames sent (a server's own extra frame) has no step.
            let Some(seq) = self.owed.pop_front() else {
                continue;
            };
            let reply = Down::Reply {
                gen: self.gen,
                seq,
                samples: self.frame.clone(),
            };
            let _ = down.try_send(reply);
        }
        Ok(())
    }

    fn log_end(&self, url: &BrainUrl) {
        let s = self.started.elapsed().as_secs_f64().max(1e-3);
        log::info!(
            brain = url.to_string().as_str(), frames = self.frames_up, replies = self.replies,
            up_bytes_per_s = (self.bytes_up as f64 / s).round(),
            down_bytes_per_s = (self.bytes_down as f64 / s).round();
            "session with the brain ended: {} frames up, {} back in {s:.1} s, {:.0} B/s up, {:.0} B/s down",
            self.frames_up, self.replies, self.bytes_up as f64 / s, self.bytes_down as f64 / s
        );
    }
}
