//! One `/api/chat` conversation after the handshake: the client's audio drives the model
//! (one step per 80 ms received), Moshi's audio and text go back. The model runs on a thread
//! of its own; it never waits on the network: the oldest input is dropped when it falls
//! behind, and output a slow client cannot take is dropped (both counted).

use super::backend::{Backend, Talk};
use super::protocol::{self, Kind};
use super::stream::{AudioIn, AudioOut};
use futures_util::{SinkExt, StreamExt};
use moshid_hal::FRAME_SAMPLES;
use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// Session limits from `[web]`.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Close after this long without a client message.
    pub idle: Duration,
    /// Input frames waiting for the model before the oldest is dropped.
    pub input_queue: usize,
    /// Output messages waiting for the client before new ones are dropped.
    pub output_queue: usize,
}

/// What the model thread hands the network side.
enum Out {
    Message(Vec<u8>),
    /// The device ended the session; the reason goes out as a kind-5 message.
    End(String),
}

/// Input frames between the network and the model thread: bounded, dropping the oldest.
struct InQueue {
    state: Mutex<(VecDeque<Vec<f32>>, bool)>,
    ready: Condvar,
    cap: usize,
}

impl InQueue {
    /// Queues a frame; true when the oldest had to go.
    fn push(&self, frame: Vec<f32>) -> bool {
        let Ok(mut s) = self.state.lock() else {
            return false;
        };
        s.0.push_back(frame);
        let dropped = s.0.len() > self.cap;
        if dropped {
            s.0.pop_front();
        }
        self.ready.notify_one();
        dropped
    }

    fn close(&self) {
        if let Ok(mut s) = self.state.lock() {
            s.1 = true;
        }
        self.ready.notify_all();
    }

    /// The next frame; Ok(None) after `wait` with none; Err once closed.
    fn pop(&self, wait: Duration) -> Result<Option<Vec<f32>>, ()> {
        let s = self.state.lock().map_err(|_| ())?;
        let (mut s, _) = self
            .ready
            .wait_timeout_while(s, wait, |s| s.0.is_empty() && !s.1)
            .map_err(|_| ())?;
        if s.1 {
            return Err(());
        }
        Ok(s.0.pop_front())
    }
}

/// Closes the queue however the session's future ends (also when the server shuts down and
/// drops it), so the model thread ends and gives the model back.
struct CloseOnDrop(Arc<InQueue>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// The model thread: steps, encodes, hands messages over without ever blocking on them.
fn model_loop(
    mut talk: Box<dyn Talk>,
    queue: Arc<InQueue>,
    out: tokio::sync::mpsc::Sender<Out>,
    backend: Arc<dyn Backend>,
) {
    let mut audio = match AudioOut::new() {
        Ok(a) => a,
        Err(e) => {
            let _ = out.try_send(Out::End(e.to_string()));
            return;
        }
    };
    let mut frame_out = vec![0.0f32; FRAME_SAMPLES];
    let mut text = String::new();
    loop {
        if let Some(why) = talk.ended() {
            let _ = out.try_send(Out::End(why));
            return;
        }
        let frame = match queue.pop(Duration::from_millis(100)) {
            Ok(Some(f)) => f,
            Ok(None) => continue,
            Err(()) => return,
        };
        text.clear();
        if let Err(e) = talk.step(&frame, &mut frame_out, &mut text) {
            let _ = out.try_send(Out::End(e));
            return;
        }
        let mut msg = vec![Kind::Audio as u8];
        if let Err(e) = audio.frame(&frame_out, &mut msg) {
            let _ = out.try_send(Out::End(e.to_string()));
            return;
        }
        if out.try_send(Out::Message(msg)).is_err() {
            backend.count_dropped(0, 1);
        }
        if !text.is_empty() && out.try_send(Out::Message(protocol::text(&text))).is_err() {
            backend.count_dropped(0, 1);
        }
    }
}

/// Why a session ended (for the log).
#[derive(Debug)]
pub enum Ended {
    /// The client closed.
    Client,
    /// An error message was sent, then a clean close.
    Error(String),
}

/// Runs the conversation on an upgraded socket whose handshake and metadata were sent.
pub async fn converse<S>(
    ws: &mut WebSocketStream<S>,
    talk: Box<dyn Talk>,
    backend: Arc<dyn Backend>,
    limits: Limits,
) -> Ended
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let queue = Arc::new(InQueue {
        state: Mutex::new((VecDeque::new(), false)),
        ready: Condvar::new(),
        cap: limits.input_queue.max(1),
    });
    let (out_tx, mut out_rx) = tokio::sync::mpsc::channel(limits.output_queue.max(1));
    let worker = {
        let (q, b) = (queue.clone(), backend.clone());
        std::thread::Builder::new()
            .name("moshid-web-model".into())
            .spawn(move || model_loop(talk, q, out_tx, b))
    };
    let worker = match worker {
        Ok(w) => w,
        Err(e) => return Ended::Error(format!("cannot start the model thread: {e}")),
    };
    let closer = CloseOnDrop(queue.clone());
    let ended = match AudioIn::new() {
        Ok(mut input) => {
            let e = pump(ws, &mut input, &queue, &mut out_rx, &backend, limits).await;
            log::debug!("web: client audio: {:?}", input.ogg_stats());
            e
        }
        Err(e) => Ended::Error(e.to_string()),
    };
    drop(closer);
    // The Talk is dropped on that thread: the room gets the conversation back once it ends.
    let _ = tokio::task::spawn_blocking(move || worker.join()).await;
    if let Ended::Error(why) = &ended {
        let _ = ws.send(Message::Binary(protocol::error(why).into())).await;
    }
    let _ = ws.close(None).await;
    ended
}

/// Moves messages both ways until the client leaves or something ends the session.
async fn pump<S>(
    ws: &mut WebSocketStream<S>,
    input: &mut AudioIn,
    queue: &InQueue,
    out_rx: &mut tokio::sync::mpsc::Receiver<Out>,
    backend: &Arc<dyn Backend>,
    limits: Limits,
) -> Ended
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut frame = vec![0.0f32; FRAME_SAMPLES];
    loop {
        tokio::select! {
            m = tokio::time::timeout(limits.idle, ws.next()) => {
                let payload = match m {
                    Err(_) => return Ended::Error(format!(
                        "no message for {} s: closing", limits.idle.as_secs())),
                    Ok(None) | Ok(Some(Ok(Message::Close(_)))) => return Ended::Client,
                    Ok(Some(Err(e))) => return Ended::Error(format!("WebSocket: {e}")),
                    Ok(Some(Ok(Message::Binary(b)))) => b,
                    // Text frames and pings are not part of the protocol's data: ignored.
                    Ok(Some(Ok(_))) => continue,
                };
                if Kind::of(&payload) != Some(Kind::Audio) {
                    continue; // control and unknown kinds: discarded, as the spec says
                }
                if let Err(e) = input.push(&payload[1..]) {
                    return Ended::Error(format!("unusable audio: {e}"));
                }
                while input.next_frame(&mut frame) {
                    if queue.push(frame.clone()) {
                        backend.count_dropped(1, 0);
                    }
                }
            }
            out = out_rx.recv() => match out {
                Some(Out::Message(m)) => {
                    if let Err(e) = ws.send(Message::Binary(m.into())).await {
                        return Ended::Error(format!("WebSocket: {e}"));
                    }
                }
                Some(Out::End(why)) => return Ended::Error(why),
                None => return Ended::Error("the model stopped".into()),
            },
        }
    }
}
