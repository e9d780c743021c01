//! The scheduler with a scripted model: who is batched with whom, masking, isolation.

use super::*;
use std::sync::Mutex;

/// Output = input * (slot + 1); text = the slot; slot `bad` fails its frames. Records the
/// slots of every batch.
struct Scripted {
    cap: usize,
    taken: Vec<bool>,
    bad: Option<usize>,
    batches: Arc<Mutex<Vec<Vec<usize>>>>,
}

impl BatchModel for Scripted {
    fn capacity(&self) -> usize {
        self.cap
    }
    fn join(&mut self, _: &JoinRequest) -> Result<usize, EngineError> {
        let i = self.taken.iter().position(|t| !t);
        let i = i.ok_or_else(|| EngineError(format!("all {} slots are taken", self.cap)))?;
        self.taken[i] = true;
        Ok(i)
    }
    fn leave(&mut self, slot: usize) {
        self.taken[slot] = false;
    }
    fn reset(&mut self, _: usize) -> Result<(), EngineError> {
        Ok(())
    }
    fn set_sampling(&mut self, _: usize, _: &SamplingOverride) -> Result<(), EngineError> {
        Ok(())
    }
    fn step(&mut self, frames: &mut [BatchFrame<'_>]) {
        let slots = frames.iter().map(|f| f.slot).collect();
        self.batches.lock().unwrap().push(slots);
        for f in frames.iter_mut() {
            if Some(f.slot) == self.bad {
                f.result = Err(EngineError("scripted failure".into()));
                continue;
            }
            for (o, i) in f.output.iter_mut().zip(f.input) {
                *o = i * (f.slot + 1) as f32;
            }
            f.text.push_str(&f.slot.to_string());
        }
    }
    fn describe(&self) -> String {
        "scripted".into()
    }
}

fn hub(cap: usize, bad: Option<usize>, wait: Duration) -> (Hub, Arc<Mutex<Vec<Vec<usize>>>>) {
    let batches = Arc::new(Mutex::new(Vec::new()));
    let m = Scripted {
        cap,
        taken: vec![false; cap],
        bad,
        batches: batches.clone(),
    };
    let timing = Timing {
        period: wait,
        gather: wait,
    };
    (Hub::start(Box::new(m), timing).unwrap(), batches)
}

/// Steps `c` `n` times with input `v`; checks each reply is its own.
fn talk(mut c: HubConversation, v: f32, n: usize) -> HubConversation {
    let (mut out, mut text) = (vec![0.0; 4], String::new());
    for _ in 0..n {
        text.clear();
        c.step(&[v; 4], &mut out, &mut text).unwrap();
        assert_eq!(out, vec![v * (c.slot() + 1) as f32; 4]);
        assert_eq!(text, c.slot().to_string());
    }
    c
}

#[test]
fn conversations_that_arrive_together_share_one_step_and_get_their_own_replies() {
    // A long gather: the round waits for every active conversation, so the batches are
    // known exactly whatever the machine's load.
    let (h, batches) = hub(4, None, Duration::from_secs(10));
    let cs: Vec<_> = (0..3)
        .map(|_| h.join(JoinRequest::default()).unwrap())
        .collect();
    let threads: Vec<_> = cs
        .into_iter()
        .enumerate()
        .map(|(i, c)| std::thread::spawn(move || talk(c, i as f32 + 0.5, 5)))
        .collect();
    for t in threads {
        drop(t.join().unwrap());
    }
    let b = batches.lock().unwrap().clone();
    assert_eq!(b.len(), 5, "{b:?}");
    assert!(b.iter().all(|s| s == &vec![0, 1, 2]), "{b:?}");
    assert_eq!(h.stats().frames.load(Ordering::Relaxed), 15);
}

#[test]
fn a_conversation_without_a_frame_is_masked_and_never_blocks_the_others() {
    let (h, batches) = hub(3, None, Duration::from_millis(20));
    let _silent = h.join(JoinRequest::default()).unwrap();
    let c = h.join(JoinRequest::default()).unwrap();
    let c = talk(c, 2.0, 4);
    let b = batches.lock().unwrap().clone();
    assert_eq!(b, vec![vec![c.slot()]; 4]);
}

#[test]
fn slots_are_counted_refused_when_full_and_freed_on_drop() {
    let (h, _) = hub(2, None, Duration::from_millis(5));
    let a = h.join(JoinRequest::default()).unwrap();
    let b = h.join(JoinRequest::default()).unwrap();
    assert_eq!(h.stats().active.load(Ordering::Relaxed), 2);
    let e = h.join(JoinRequest::default()).err().expect("full");
    assert!(e.to_string().contains("all 2"), "{e}");
    drop(a);
    let c = h.join(JoinRequest::default()).unwrap();
    assert_ne!(c.slot(), b.slot());
    drop((b, c));
    // Leave is a message: the next join sees both slots free.
    let _d = h.join(JoinRequest::default()).unwrap();
    let _e = h.join(JoinRequest::default()).unwrap();
}

#[test]
fn a_failing_conversation_costs_only_its_own_frames() {
    let (h, _) = hub(2, Some(0), Duration::from_secs(10));
    let mut bad = h.join(JoinRequest::default()).unwrap();
    let good = h.join(JoinRequest::default()).unwrap();
    assert_eq!(bad.slot(), 0);
    let t = std::thread::spawn(move || talk(good, 3.0, 3));
    let (mut out, mut text) = (vec![1.0; 4], String::new());
    for _ in 0..3 {
        let e = bad.step(&[1.0; 4], &mut out, &mut text).unwrap_err();
        assert!(e.to_string().contains("scripted failure"), "{e}");
    }
    drop(t.join().unwrap());
}

#[test]
fn a_stopped_hub_fails_steps_instead_of_wedging() {
    let (h, _) = hub(1, None, Duration::from_millis(5));
    let mut c = h.join(JoinRequest::default()).unwrap();
    drop(h);
    let (mut out, mut text) = (vec![0.0; 4], String::new());
    assert!(c.step(&[0.0; 4], &mut out, &mut text).is_err());
}
