//! The satellite's jitter buffer: the brain's reply to the frame sent at step `k` plays at
//! step `k + delay`. `delay` (in 80 ms frames) is sized from the measured arrivals: the
//! 95th percentile of the steps the last replies took (the longest, while fewer than
//! [`SETTLE`] came), so one hiccup costs one late frame, not seconds of extra delay. A reply
//! not there at its step is silence (a late frame); one that comes after its step is
//! dropped.

use std::collections::VecDeque;

/// Arrivals remembered to size the delay.
const WINDOW: usize = 64;
/// Arrivals before the percentile is trusted (the longest counts until then).
const SETTLE: usize = 16;
/// Buffers kept for reuse.
const SPARE: usize = 8;

/// What `play` put in the output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Played {
    /// The reply due now.
    Reply,
    /// Silence: the reply due now was sent to a live brain but is not back (late).
    Late,
    /// Silence: nothing was due (no live session, or the first steps of one).
    Nothing,
}

/// Replies waiting for their step.
pub struct Jitter {
    frames: VecDeque<(u64, Vec<f32>)>,
    delay: u64,
    max_delay: u64,
    /// Steps each recent reply took to arrive.
    window: VecDeque<u64>,
    /// The first step of the live session (its replies are owed from then on).
    live_from: Option<u64>,
    spare: Vec<Vec<f32>>,
}

impl Jitter {
    /// A buffer that holds replies back at most `max_delay` frames (at least 1).
    pub fn new(max_delay: usize) -> Jitter {
        Jitter {
            frames: VecDeque::with_capacity(max_delay + 2),
            delay: 1,
            max_delay: max_delay.max(1) as u64,
            window: VecDeque::with_capacity(WINDOW),
            live_from: None,
            spare: Vec::new(),
        }
    }

    /// The current delay in frames.
    pub fn delay(&self) -> u64 {
        self.delay
    }

    /// A session went live with the frame of step `first` (None: no live session).
    pub fn set_live(&mut self, first: Option<u64>) {
        self.live_from = first;
        if first.is_none() {
            self.clear();
        }
    }

    /// Drops every waiting reply.
    pub fn clear(&mut self) {
        while let Some((_, f)) = self.frames.pop_front() {
            self.recycle(f);
        }
    }

    fn recycle(&mut self, f: Vec<f32>) {
        if self.spare.len() < SPARE {
            self.spare.push(f);
        }
    }

    /// A buffer for the next reply (recycled).
    pub fn buffer(&mut self) -> Vec<f32> {
        self.spare.pop().unwrap_or_default()
    }

    /// The reply to step `seq` arrived while step `now` runs.
    pub fn arrive(&mut self, seq: u64, frame: Vec<f32>, now: u64) {
        let took = now.saturating_sub(seq).max(1);
        if self.window.len() == WINDOW {
            self.window.pop_front();
        }
        self.window.push_back(took);
        let want = if self.window.len() < SETTLE {
            took.max(self.delay)
        } else {
            p95(&self.window)
        };
        self.delay = want.clamp(1, self.max_delay);
        if seq + self.delay < now {
            // Later than even the longest delay allows: its step is gone.
            self.recycle(frame);
            return;
        }
        let at = self.frames.partition_point(|(s, _)| *s < seq);
        self.frames.insert(at, (seq, frame));
    }

    /// Writes the reply due at step `now` into `out` (silence when there is none).
    pub fn play(&mut self, now: u64, out: &mut [f32]) -> Played {
        let Some(due) = now.checked_sub(self.delay) else {
            out.fill(0.0);
            return Played::Nothing;
        };
        while self.frames.front().is_some_and(|(s, _)| *s < due) {
            if let Some((_, f)) = self.frames.pop_front() {
                self.recycle(f);
            }
        }
        match self.frames.front() {
            Some((s, f)) if *s == due && f.len() == out.len() => {
                out.copy_from_slice(f);
                if let Some((_, f)) = self.frames.pop_front() {
                    self.recycle(f);
                }
                Played::Reply
            }
            _ => {
                out.fill(0.0);
                match self.live_from {
                    Some(first) if due >= first => Played::Late,
                    _ => Played::Nothing,
                }
            }
        }
    }
}

/// The 95th percentile of at most [`WINDOW`] values.
fn p95(w: &VecDeque<u64>) -> u64 {
    let mut v = [0u64; WINDOW];
    let n = w.len().min(WINDOW);
    for (d, s) in v.iter_mut().zip(w.iter()) {
        *d = *s;
    }
    let v = &mut v[..n];
    v.sort_unstable();
    v[(n * 95 / 100).min(n.saturating_sub(1))]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(v: f32) -> Vec<f32> {
        vec![v; 4]
    }

    #[test]
    fn fast_replies_play_one_frame_later() {
        let mut j = Jitter::new(6);
        j.set_live(Some(1));
        let mut out = [0.0; 4];
        assert_eq!(j.play(1, &mut out), Played::Nothing);
        for step in 2..10u64 {
            j.arrive(step - 1, frame(step as f32 - 1.0), step);
            assert_eq!(j.play(step, &mut out), Played::Reply);
            assert_eq!(out[0], step as f32 - 1.0);
        }
        assert_eq!(j.delay(), 1);
    }

    #[test]
    fn a_late_reply_is_silence_then_the_delay_covers_it() {
        let mut j = Jitter::new(6);
        j.set_live(Some(1));
        let mut out = [0.0; 4];
        j.arrive(1, frame(1.0), 2);
        assert_eq!(j.play(2, &mut out), Played::Reply);
        // The reply to step 2 is not back at step 3: silence, counted late.
        assert_eq!(j.play(3, &mut out), Played::Late);
        assert_eq!(out, [0.0; 4]);
        // It comes at step 4 (two steps): the delay grows to 2, step 2's reply plays at step
        // 4 and step 3's at step 5.
        j.arrive(2, frame(2.0), 4);
        j.arrive(3, frame(3.0), 4);
        assert_eq!(j.delay(), 2);
        assert_eq!(j.play(4, &mut out), Played::Reply);
        assert_eq!(out[0], 2.0);
        j.arrive(4, frame(4.0), 5);
        assert_eq!(j.play(5, &mut out), Played::Reply);
        assert_eq!(out[0], 3.0);
    }

    #[test]
    fn the_delay_is_capped_and_shrinks_once_95_percent_of_replies_are_fast() {
        let mut j = Jitter::new(3);
        j.set_live(Some(1));
        j.arrive(1, frame(1.0), 9);
        assert_eq!(j.delay(), 3, "capped at max_delay");
        let mut out = [0.0; 4];
        for step in 10..(10 + WINDOW as u64 + 1) {
            j.arrive(step - 1, frame(0.5), step);
            j.play(step, &mut out);
        }
        assert_eq!(j.delay(), 1);
        // One hiccup among fast replies: that reply is late, the delay stays one frame.
        j.arrive(100, frame(1.0), 104);
        assert_eq!(j.delay(), 1);
    }

    #[test]
    fn without_a_live_session_silence_is_not_late() {
        let mut j = Jitter::new(6);
        let mut out = [1.0; 4];
        assert_eq!(j.play(5, &mut out), Played::Nothing);
        assert_eq!(out, [0.0; 4]);
    }
}
