//! `[model] mimi_overlap`: Mimi's decode of frame t runs on a second thread while the LM
//! computes frame t+1. The LM's step t+1 needs only the user's codes (encoded first) and its
//! own state, never Mimi's output, and the decoder's state only moves with its own calls, so
//! the two are independent; each model still sees the same calls in the same order as in the
//! sequential step, which the test below checks bit for bit.

use super::{decode, lm_step};
use crate::engine::EngineError;
use moshid_models::lm::{LmGen, StepOut};
use moshid_models::mimi::Mimi;

/// The LM's step on `codes` while `mimi` decodes `previous` (the last step's frame) into
/// `output` on a scoped thread; returns the LM's frame, to decode during the next step.
/// A thread per step costs tens of microseconds against a step of tens of milliseconds, and
/// joins before the step returns, so nothing outlives a conversation's reset.
pub(super) fn lm_step_while_decoding(
    gen: &mut LmGen,
    codes: &[u32],
    mimi: &mut Mimi,
    previous: Option<&StepOut>,
    output: &mut [f32],
) -> Result<Option<StepOut>, EngineError> {
    std::thread::scope(|s| {
        let decoding = std::thread::Builder::new()
            .name("mimi-decode".into())
            .spawn_scoped(s, move || decode(mimi, previous, output))
            .map_err(|e| EngineError(format!("cannot start the Mimi decode thread: {e}")))?;
        let out = lm_step(gen, codes);
        decoding
            .join()
            .map_err(|_| EngineError("Mimi decode panicked".into()))??;
        out
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
