//! `[model] mimi_overlap`: Mimi's decode of frame t runs on a second thread while the LM
//! computes frame t+1 (for every conversation of the step). The LM's step t+1 needs only the user's codes (encoded first) and its
//! own state, never Mimi's output, and the decoder's state only moves with its own calls, so
//! the two are independent; each model still sees the same calls in the same order as in the
//! sequential step, which the test below checks bit for bit.

use super::batch::{decode_pending, SlotState};
use crate::engine::BatchFrame;
use moshid_models::lm::{LmBatch, LmError, SlotId, StepOut};

/// The LM's step on `inputs` while each frame's slot decodes its pending frame (the last
/// step's) into the frame's output on a scoped thread; returns the LM's results, whose
/// frames the next step decodes. Frames already failed are left alone. A thread per step
/// costs tens of microseconds against a step of tens of milliseconds, and joins before the
/// step returns, so nothing outlives a conversation's reset.
pub(super) fn lm_step_while_decoding(
    lm: &mut LmBatch,
    inputs: &[(SlotId, &[u32])],
    slots: &mut [Option<SlotState>],
    frames: &mut [BatchFrame<'_>],
) -> Vec<Result<Option<StepOut>, LmError>> {
    std::thread::scope(|s| {
        let work = move || decode_pending(slots, frames);
        match std::thread::Builder::new()
            .name("mimi-decode".into())
            .spawn_scoped(s, work)
        {
            Ok(decoding) => {
                let out = lm.step(inputs);
                if decoding.join().is_err() {
                    let e = "Mimi decode panicked";
                    return out
                        .into_iter()
                        .map(|_| Err(LmError::Input(e.into())))
                        .collect();
                }
                out
            }
            Err(e) => {
                let e = format!("cannot start the Mimi decode thread: {e}");
                inputs
                    .iter()
                    .map(|_| Err(LmError::Input(e.clone())))
                    .collect()
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, DeviceSpec};
    use crate::engine::Engine;
    use moshid_hal::FRAME_SAMPLES;

    fn engine(dir: &std::path::Path, overlap: bool) -> Box<dyn Engine> {
        let spec = crate::demo_model::ensure(dir, "moshiko").unwrap();
        let mut cfg = Config::demo_default();
        cfg.model.device = DeviceSpec::Cpu;
        cfg.model.mimi_overlap = overlap;
        super::super::load(&spec, &cfg).unwrap()
    }

    /// A voice-like input: two tones under a slow envelope, different every frame.
    fn input(frame: usize) -> Vec<f32> {
        (0..FRAME_SAMPLES)
            .map(|i| {
                let t = (frame * FRAME_SAMPLES + i) as f32 / 24_000.0;
                let env = 0.5 + 0.5 * (t * 3.0).sin();
                0.3 * env
                    * ((t * 220.0 * std::f32::consts::TAU).sin()
                        + 0.5 * (t * 570.0 * std::f32::consts::TAU).sin())
            })
            .collect()
    }

    /// Runs `frames` steps; returns each output frame's bits and the text.
    fn run(e: &mut dyn Engine, frames: usize) -> (Vec<Vec<u32>>, String) {
        let (mut audio, mut text) = (Vec::new(), String::new());
        let mut out = vec![f32::NAN; FRAME_SAMPLES];
        for t in 0..frames {
            e.step(&input(t), &mut out, &mut text).unwrap();
            audio.push(out.iter().map(|v| v.to_bits()).collect());
        }
        (audio, text)
    }

    #[test]
    fn overlapped_steps_give_the_sequential_audio_one_frame_later() {
        let dir = tempfile::tempdir().unwrap();
        let mut seq = engine(dir.path(), false);
        let mut ovl = engine(dir.path(), true);
        assert!(ovl.describe().contains("overlapping"), "{}", ovl.describe());
        for round in 0..2 {
            let frames = 24;
            let (a, ta) = run(seq.as_mut(), frames);
            let (b, tb) = run(ovl.as_mut(), frames);
            assert!(
                b[0].iter().all(|&v| v == 0),
                "round {round}: frame 0 is silence"
            );
            for t in 0..frames - 1 {
                assert!(a[t] == b[t + 1], "round {round}: frame {t} differs");
            }
            // Not vacuous: the model spoke (the demo model's random weights make sound).
            assert!(a.iter().flatten().any(|&v| f32::from_bits(v).abs() > 1e-6));
            assert_eq!(ta, tb, "round {round}: the text is not delayed");
            // A reset forgets the pending frame too: the next round starts alike.
            seq.reset();
            ovl.reset();
        }
    }
}
