//! The playback thread: plays frames on the room's speaker, or on a remote endpoint's sink
//! while one holds the conversation (the room's speaker then plays silence: hal's
//! playback stream fills gaps itself).

use super::{OutFrame, OutMsg};
use crate::control::Shared;
use crate::sound::Sink;
use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender};
use moshid_hal::FRAME_SAMPLES;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// The frame queue, the free list the thread refills, and its handle.
pub(super) type Spawned = (Sender<OutMsg>, Receiver<Vec<f32>>, JoinHandle<()>);

/// Starts the thread.
pub(super) fn spawn(
    room: Box<dyn Sink>,
    queue_frames: usize,
    shared: &Arc<Shared>,
    stop: &Arc<AtomicBool>,
) -> std::io::Result<Spawned> {
    let depth = queue_frames.max(1) + 1;
    let (full_tx, full_rx) = bounded::<OutMsg>(depth);
    let (free_tx, free_rx) = bounded::<Vec<f32>>(depth);
    for _ in 0..depth {
        let _ = free_tx.try_send(vec![0.0; FRAME_SAMPLES]);
    }
    let out = Output {
        room,
        full_rx,
        free_tx,
        shared: shared.clone(),
        stop: stop.clone(),
    };
    let h = std::thread::Builder::new()
        .name("moshid-playback".into())
        .spawn(move || out.run())?;
    Ok((full_tx, free_rx, h))
}

struct Output {
    room: Box<dyn Sink>,
    full_rx: Receiver<OutMsg>,
    free_tx: Sender<Vec<f32>>,
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
}

impl Output {
    fn run(mut self) {
        loop {
            match self.full_rx.recv_timeout(Duration::from_millis(200)) {
                Ok(OutMsg::Frame(f)) => {
                    if !self.play(f) {
                        break;
                    }
                }
                Err(RecvTimeoutError::Timeout) if self.stop.load(Ordering::Relaxed) => break,
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        if let Err(e) = self.room.finish() {
            log::error!("speaker: {e}");
        }
    }

    /// Plays one frame where the conversation is; false when the room's speaker failed.
    fn play(&mut self, f: OutFrame) -> bool {
        let sink = &mut self.room;
        if let Err(e) = sink.play(&f.samples) {
            log::error!("speaker failed: {e}");
            self.shared.set_error(&format!("speaker: {e}"));
            return false;
        } else {
            let latency = f.captured_at.elapsed() + sink.delay();
            self.shared.record_latency(latency.as_secs_f32() * 1000.0);
        }
        let _ = self.free_tx.try_send(f.samples);
        true
    }
}
