//! One `/api/chat` conversation after the handshake: the client's audio drives the model
//! (one step per 80 ms received), Moshi's audio and text go back. The model runs on a thread
//! of its own; it never waits on the network: the oldest input is dropped when it falls
//! behind, and output a slow client cannot take is dropped (both counted). Reading and
//! writing run side by side, so a client that stops reading never holds up the session's
//! control path: the idle timeout and the device ending the session (`set/conversation
//! OFF`) act at once, and a message that cannot be written within the idle timeout closes
//! the connection.

use super::backend::{Backend, Talk};
use super::protocol::{self, Kind};
use super::stream::{AudioIn, AudioOut};
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use moshid_hal::FRAME_SAMPLES;
use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::WebSocketStream;

/// Session limits from `[web]`.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Close after this long without a client message, or with a message to the client
    /// that could not be written.
    pub idle: Duration,
    /// Input frames waiting for the model before the oldest is dropped.
    pub input_queue: usize,
    /// Output messages waiting for the client before new ones are dropped.
    pub output_queue: usize,
}

/// How long the last words (a kind-5 message, the close) may take to a client that is
/// not reading: then the connection is simply dropped.
const LAST_WORDS: Duration = Duration::from_secs(2);

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

/// The model thread: steps, encodes, hands messages over without ever blocking on them
/// (a full queue drops the message, counted); returns why the device ended the session.
fn model_loop(
    mut talk: Box<dyn Talk>,
    queue: Arc<InQueue>,
    out: tokio::sync::mpsc::Sender<Vec<u8>>,
    backend: Arc<dyn Backend>,
) -> Option<String> {
    let mut audio = match AudioOut::new() {
        Ok(a) => a,
        Err(e) => return Some(e.to_string()),
    };
    let mut frame_out = vec![0.0f32; FRAME_SAMPLES];
    let mut text = String::new();
    loop {
        if let Some(why) = talk.ended() {
            return Some(why);
        }
        let frame = match queue.pop(Duration::from_millis(100)) {
            Ok(Some(f)) => f,
            Ok(None) => continue,
            Err(()) => return None,
        };
        text.clear();
        if let Err(e) = talk.step(&frame, &mut frame_out, &mut text) {
            return Some(e);
        }
        let mut msg = vec![Kind::Audio as u8];
        if let Err(e) = audio.frame(&frame_out, &mut msg) {
            return Some(e.to_string());
        }
        if out.try_send(msg).is_err() {
            backend.count_dropped(0, 1);
        }
        if !text.is_empty() && out.try_send(protocol::text(&text)).is_err() {
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
    let (out_tx, out_rx) = tokio::sync::mpsc::channel(limits.output_queue.max(1));
    // The reason the device ended the session travels apart from the audio, so that a full
    // output queue cannot lose it.
    let (end_tx, end_rx) = tokio::sync::oneshot::channel();
    let worker = {
        let (q, b) = (queue.clone(), backend.clone());
        std::thread::Builder::new()
            .name("moshid-web-model".into())
            .spawn(move || {
                if let Some(why) = model_loop(talk, q, out_tx, b) {
                    let _ = end_tx.send(why);
                }
            })
    };
    let worker = match worker {
        Ok(w) => w,
        Err(e) => return Ended::Error(format!("cannot start the model thread: {e}")),
    };
    let closer = CloseOnDrop(queue.clone());
    let ended = match AudioIn::new() {
        Ok(mut input) => {
            let (sink, stream) = ws.split();
            let reader = read_loop(stream, &mut input, &queue, end_rx, &backend, limits.idle);
            let writer = write_loop(sink, out_rx, limits.idle);
            let e = tokio::select! {
                e = reader => e,
                e = writer => e,
            };
            log::debug!("web: client audio: {:?}", input.ogg_stats());
            e
        }
        Err(e) => Ended::Error(e.to_string()),
    };
    drop(closer);
    // The Talk is dropped on that thread: the room gets the conversation back once it ends.
    let _ = tokio::task::spawn_blocking(move || worker.join()).await;
    let last_words = async {
        if let Ended::Error(why) = &ended {
            let _ = ws.send(Message::Binary(protocol::error(why).into())).await;
        }
        let _ = ws.close(None).await;
    };
    // A client that does not read gets nothing more: its socket closes when dropped.
    let _ = tokio::time::timeout(LAST_WORDS, last_words).await;
    ended
}

/// Sends Moshi's messages as they come; ends the session when one cannot be written within
/// `timeout` (a client that stopped reading, a dead peer).
async fn write_loop<W>(
    mut sink: W,
    mut out: tokio::sync::mpsc::Receiver<Vec<u8>>,
    timeout: Duration,
) -> Ended
where
    W: Sink<Message, Error = tungstenite::Error> + Unpin,
{
    while let Some(m) = out.recv().await {
        match tokio::time::timeout(timeout, sink.send(Message::Binary(m.into()))).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Ended::Error(format!("WebSocket: {e}")),
            Err(_) => {
                return Ended::Error(format!(
                    "the client read nothing for {} s: closing",
                    timeout.as_secs()
                ))
            }
        }
    }
    // The model thread is gone; the reader learns why.
    std::future::pending().await
}

/// Reads the client's audio into the model's queue until the client leaves, goes quiet for
/// `idle`, or the device ends the session (`end`).
async fn read_loop<R>(
    mut stream: R,
    input: &mut AudioIn,
    queue: &InQueue,
    mut end: tokio::sync::oneshot::Receiver<String>,
    backend: &Arc<dyn Backend>,
    idle: Duration,
) -> Ended
where
    R: Stream<Item = Result<Message, tungstenite::Error>> + Unpin,
{
    let mut frame = vec![0.0f32; FRAME_SAMPLES];
    loop {
        let m = tokio::select! {
            m = tokio::time::timeout(idle, stream.next()) => m,
            why = &mut end => {
                return Ended::Error(why.unwrap_or_else(|_| "the model stopped".into()))
            }
        };
        let payload = match m {
            Err(_) => return Ended::Error(format!("no message for {} s: closing", idle.as_secs())),
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
}
