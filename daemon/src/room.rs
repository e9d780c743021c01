//! The room's conversation as the kiosk screen shows it (`GET /api/room`): the transcript as
//! it comes, how loud Moshi is speaking, and how many times the wake word was heard.
//!
//! The inference thread only stores the output level (an atomic); the transcript and the wake
//! count come from the pipeline's events on a thread of their own ([`spawn_recorder`]), so
//! the hot path never takes this module's lock.

use crate::control::Shared;
use crate::pipeline::{Event, EventTx};
use serde::Serialize;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Transcript pieces kept for the screen (a kiosk that polls late still gets this many).
const KEEP: usize = 400;

/// What the room said and heard lately.
#[derive(Debug)]
pub struct RoomLog {
    /// Level of what the room's speaker got last, dBFS x 10.
    output_level: AtomicI32,
    /// Wake-word detections since start.
    wakes: AtomicU64,
    text: Mutex<Pieces>,
}

#[derive(Debug, Default)]
struct Pieces {
    /// (sequence number, text), oldest first.
    kept: VecDeque<(u64, String)>,
    next: u64,
    /// Bumped when a conversation starts (a piece's time goes back to the start).
    conversation: u64,
    last_time: f64,
}

/// `GET /api/room?since=N`: the pieces from sequence `N` on, and the live figures.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RoomView {
    /// Which conversation the text belongs to: a new number means a new conversation
    /// (the screen clears its transcript).
    pub conversation: u64,
    /// Pass this as `since` next time.
    pub next: u64,
    /// The text said since `since` (all that is kept when `since` is older).
    pub text: String,
    /// Wake-word detections since start: an increase is a detection to flash.
    pub wakes: u64,
    /// Level of what the room's speaker plays, dBFS (-120: silence).
    pub output_dbfs: f64,
}

impl Default for RoomLog {
    fn default() -> Self {
        RoomLog {
            output_level: AtomicI32::new(-1200),
            wakes: AtomicU64::new(0),
            text: Mutex::new(Pieces::default()),
        }
    }
}

impl RoomLog {
    /// Records the RMS level of a frame sent to the speaker (inference thread: one store).
    pub fn record_output_rms(&self, rms: f32) {
        let db = if rms > 1e-6 {
            20.0 * rms.log10()
        } else {
            -120.0
        };
        let tenths = (db.max(-120.0) * 10.0).round() as i32;
        self.output_level.store(tenths, Ordering::Relaxed);
    }

    fn pieces(&self) -> std::sync::MutexGuard<'_, Pieces> {
        // A panic while holding it leaves whole strings behind: still usable.
        self.text.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes what the screen shows from one pipeline event.
    pub fn record(&self, ev: &Event) {
        match ev {
            Event::Transcript { text, time } => {
                let mut p = self.pieces();
                if *time < p.last_time || p.next == 0 {
                    p.conversation += 1;
                }
                p.last_time = *time;
                let seq = p.next;
                p.next += 1;
                p.kept.push_back((seq, text.clone()));
                if p.kept.len() > KEEP {
                    p.kept.pop_front();
                }
            }
            Event::Wake(_) => {
                self.wakes.fetch_add(1, Ordering::Relaxed);
                // The conversation it starts is a new one even if its first words are late.
                let mut p = self.pieces();
                p.conversation += 1;
                p.last_time = 0.0;
            }
            _ => {}
        }
    }

    /// The pieces from `since` on, and the live figures.
    pub fn view(&self, since: u64) -> RoomView {
        let p = self.pieces();
        let text = p
            .kept
            .iter()
            .filter(|(seq, _)| *seq >= since)
            .map(|(_, t)| t.as_str())
            .collect();
        RoomView {
            conversation: p.conversation,
            next: p.next,
            text,
            wakes: self.wakes.load(Ordering::Relaxed),
            output_dbfs: f64::from(self.output_level.load(Ordering::Relaxed)) / 10.0,
        }
    }
}

/// A thread that records the pipeline's events into `shared.room`; returns where to send
/// them.
pub fn spawn_recorder(shared: Arc<Shared>) -> std::io::Result<EventTx> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Event>(256);
    std::thread::Builder::new()
        .name("moshid-room-log".into())
        .spawn(move || {
            while let Some(ev) = rx.blocking_recv() {
                shared.room.record(&ev);
            }
        })?;
    Ok(tx)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn piece(text: &str, time: f64) -> Event {
        Event::Transcript {
            text: text.into(),
            time,
        }
    }

    #[test]
    fn the_screen_gets_new_text_and_sees_conversations_and_wakes() {
        let log = RoomLog::default();
        log.record(&piece(" hello", 0.5));
        log.record(&piece(" there", 0.9));
        let v = log.view(0);
        assert_eq!(
            (v.text.as_str(), v.next, v.conversation),
            (" hello there", 2, 1)
        );
        assert_eq!(log.view(1).text, " there");
        assert_eq!(log.view(2).text, "");
        let heard = crate::pipeline::Heard {
            wake_word: "okay_nabu".into(),
            probability: 0.9,
        };
        log.record(&Event::Wake(heard));
        log.record(&piece(" again", 0.2));
        let v = log.view(2);
        assert_eq!((v.text.as_str(), v.conversation, v.wakes), (" again", 2, 1));
        // A new conversation without a wake word: its time starts over.
        log.record(&piece(" new", 0.1));
        assert_eq!(log.view(0).conversation, 3);
        log.record_output_rms(0.1);
        assert_eq!(log.view(0).output_dbfs, -20.0);
        for i in 0..KEEP + 10 {
            log.record(&piece("x", 1.0 + i as f64));
        }
        assert_eq!(log.view(0).text.len(), KEEP);
    }
}
