//! Mimi + Moshi for several conversations at once: one [`LmBatch`] over the shared LM
//! weights, and per slot its own Mimi streaming state, text stream and pending frame. A
//! step encodes every slot's frame in one batched Mimi pass, runs the LM once for all of
//! them, and decodes them in one batched pass ([`mimi`]). [`super::MoshiEngine`] is this with
//! one slot.

mod mimi;

pub(super) use mimi::decode_pending;

use crate::engine::{BatchFrame, BatchModel, EngineError, JoinRequest, SamplingOverride};
use moshid_models::lm::{LmBatch, PromptedState, Sampling, SlotId, StepOut};
use moshid_models::mimi::Mimi;
use moshid_models::tokenizer::{StreamState, TextTokenizer};
use std::sync::Arc;

/// One conversation's own state beside the shared weights.
pub(super) struct SlotState {
    /// None while the slot is free (the Mimi stream is kept for the next conversation).
    id: Option<SlotId>,
    /// This slot's Mimi stream: the model's weights, its own streaming state.
    pub(super) mimi: Mimi,
    text_state: StreamState,
    codes: Vec<u32>,
    /// With `overlap`, the LM's last frame, decoded during the next step.
    pub(super) pending: Option<StepOut>,
    /// The persona this conversation asked for (restored at each reset); None: the model's.
    persona: Option<Arc<PromptedState>>,
}

/// Several conversations over one model.
pub struct MoshiBatch {
    lm: LmBatch,
    /// The loaded Mimi, whose [`Mimi::new_stream`] each slot gets the first time it is
    /// taken (the weights shared, a stream state of its own).
    mimi: Mimi,
    slots: Vec<Option<SlotState>>,
    tokenizer: Arc<TextTokenizer>,
    what: String,
    /// The configured sampling, which a conversation's override starts from.
    sampling: Sampling,
    /// `[model] mimi_overlap`: decode frame t during the LM's step t+1.
    overlap: bool,
    /// `model.persona`'s prompted state: every conversation starts from a copy of it.
    prompted: Option<PromptedState>,
}

/// What [`MoshiBatch::new`] takes: the loaded parts of a model.
pub(super) struct Parts {
    pub lm: LmBatch,
    pub mimi: Mimi,
    pub tokenizer: TextTokenizer,
    pub what: String,
    pub sampling: Sampling,
    pub overlap: bool,
    pub prompted: Option<PromptedState>,
}

impl MoshiBatch {
    pub(super) fn new(p: Parts) -> MoshiBatch {
        MoshiBatch {
            slots: (0..p.lm.capacity()).map(|_| None).collect(),
            lm: p.lm,
            mimi: p.mimi,
            tokenizer: Arc::new(p.tokenizer),
            what: p.what,
            sampling: p.sampling,
            overlap: p.overlap,
            prompted: p.prompted,
        }
    }

    fn sampling_for(&self, o: &SamplingOverride) -> Sampling {
        let b = self.sampling;
        Sampling {
            temp_text: o.temp_text.unwrap_or(b.temp_text),
            temp_audio: o.temp_audio.unwrap_or(b.temp_audio),
            top_k: o.top_k_text.unwrap_or(b.top_k),
            greedy: b.greedy,
            seed: o.seed.unwrap_or(b.seed),
        }
    }

    /// The LM slot of a taken slot.
    fn id(&self, slot: usize) -> Result<SlotId, EngineError> {
        self.slots
            .get(slot)
            .and_then(|s| s.as_ref())
            .and_then(|s| s.id)
            .ok_or_else(|| EngineError(format!("conversation slot {slot} is not taken")))
    }

    /// Starts the LM side of a conversation in `slot` from step 0 (or the persona's state:
    /// the slot's own, else the model's).
    fn restart_lm(&mut self, slot: usize) -> Result<(), EngineError> {
        let id = self.id(slot)?;
        let own = self.slots[slot].as_ref().and_then(|s| s.persona.clone());
        let restored = match own.as_deref().or(self.prompted.as_ref()) {
            Some(p) => self.lm.restore_prompted(id, p).map_err(|e| {
                log::warn!("persona state not restored ({e}): starting without it");
            }),
            None => Err(()),
        };
        if restored.is_err() {
            self.lm
                .reset(id)
                .map_err(|e| EngineError(format!("LM reset: {e}")))?;
        }
        Ok(())
    }

    /// Encodes each frame's input with its slot's Mimi stream, all in one batched step; a
    /// failure fails that frame only.
    fn encode(&mut self, frames: &mut [BatchFrame<'_>]) {
        mimi::encode(&mut self.slots, frames);
    }

    /// The LM's step for the frames still without error; each frame's StepOut (None for
    /// the failed and for the acoustic delay). With `overlap`, each slot's pending frame is
    /// decoded into its output meanwhile.
    fn lm_and_decode(&mut self, frames: &mut [BatchFrame<'_>]) -> Vec<Option<StepOut>> {
        let mut inputs: Vec<(SlotId, Vec<u32>)> = Vec::with_capacity(frames.len());
        let mut rows = Vec::with_capacity(frames.len());
        for (i, f) in frames.iter().enumerate() {
            if f.result.is_ok() {
                if let Some(Some(s)) = self.slots.get(f.slot) {
                    if let Some(id) = s.id {
                        inputs.push((id, s.codes.clone()));
                        rows.push(i);
                    }
                }
            }
        }
        let refs: Vec<(SlotId, &[u32])> = inputs.iter().map(|(id, c)| (*id, &c[..])).collect();
        let lm = &mut self.lm;
        let results = if self.overlap {
            super::overlap::lm_step_while_decoding(lm, &refs, &mut self.slots, frames)
        } else {
            lm.step(&refs)
        };
        let mut outs = vec![None; frames.len()];
        for (&i, r) in rows.iter().zip(results) {
            match r {
                Ok(o) => outs[i] = o,
                Err(e) => frames[i].result = Err(EngineError(format!("LM step: {e}"))),
            }
        }
        outs
    }
}

impl BatchModel for MoshiBatch {
    fn capacity(&self) -> usize {
        self.slots.len()
    }

    fn join(&mut self, r: &JoinRequest) -> Result<usize, EngineError> {
        let o = &r.sampling;
        let sampling = self.sampling_for(o);
        let own = r.persona.as_ref().map(|p| p.state.clone());
        let id = match own.as_deref().or(self.prompted.as_ref()) {
            Some(p) => self.lm.join_prompted(p, sampling),
            None => self.lm.join(sampling),
        }
        .map_err(|e| match &r.persona {
            Some(p) => EngineError(format!("persona {}: {e}", p.name)),
            None => EngineError(e.to_string()),
        })?;
        let slot = id.index();
        let state = self.slots[slot].get_or_insert_with(|| SlotState {
            id: None,
            mimi: self.mimi.new_stream(),
            text_state: StreamState::default(),
            codes: vec![0; self.mimi.num_codebooks()],
            pending: None,
            persona: None,
        });
        state.id = Some(id);
        state.persona = own;
        state.mimi.reset();
        state.text_state = StreamState::default();
        state.pending = None;
        if let Err(e) = self.lm.set_sampling(id, sampling, o.top_k_audio) {
            log::warn!("slot {slot}: sampling not applied: {e}");
        }
        Ok(slot)
    }

    fn leave(&mut self, slot: usize) {
        if let Ok(id) = self.id(slot) {
            let _ = self.lm.leave(id);
        }
        if let Some(Some(s)) = self.slots.get_mut(slot) {
            s.id = None;
            s.persona = None;
        }
    }

    fn reset(&mut self, slot: usize) -> Result<(), EngineError> {
        self.restart_lm(slot)?;
        if let Some(Some(s)) = self.slots.get_mut(slot) {
            s.pending = None;
            s.mimi.reset();
            s.text_state = StreamState::default();
        }
        Ok(())
    }

    fn set_sampling(&mut self, slot: usize, o: &SamplingOverride) -> Result<(), EngineError> {
        let id = self.id(slot)?;
        let s = self.sampling_for(o);
        self.lm
            .set_sampling(id, s, o.top_k_audio)
            .map_err(|e| EngineError(format!("sampling: {e}")))
    }

    fn step(&mut self, frames: &mut [BatchFrame<'_>]) {
        self.encode(frames);
        let outs = self.lm_and_decode(frames);
        for (f, out) in frames.iter_mut().zip(outs) {
            if f.result.is_err() {
                f.output.fill(0.0);
                continue;
            }
            let Some(Some(s)) = self.slots.get_mut(f.slot) else {
                continue;
            };
            // Decoded below in one batch (or, with `overlap`, during the next step).
            s.pending = out;
            // Text is not delayed: the token is the LM's, sampled at this step either way.
            if let Some(out) = out {
                self.tokenizer.push(&mut s.text_state, out.text, f.text);
            }
        }
        if !self.overlap {
            mimi::decode_pending(&mut self.slots, frames);
        }
    }

    fn describe(&self) -> String {
        self.what.clone()
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, DeviceSpec};
    use crate::engine::{Engine, JoinRequest};
    use crate::hub::{Hub, Timing};
    use moshid_hal::FRAME_SAMPLES;
    use std::time::Duration;

    fn rig(dir: &std::path::Path) -> (crate::model_spec::ModelSpec, Config) {
        let spec = crate::demo_model::ensure(dir, "moshiko").unwrap();
        let mut cfg = Config::demo_default();
        cfg.model.device = DeviceSpec::Cpu;
        // Greedy: the demo model is f32 on candle's dense matmuls, whose 1-row and 3-row
        // products agree to rounding (models/tests/lm_batch.rs bounds it), and a sampled
        // draw that lands within rounding of a boundary would part two runs for good.
        cfg.sampling.greedy = true;
        (spec, cfg)
    }

    /// A voice-like input per conversation `c`: two tones, different every frame.
    fn input(c: usize, frame: usize) -> Vec<f32> {
        (0..FRAME_SAMPLES)
            .map(|i| {
                let t = (frame * FRAME_SAMPLES + i) as f32 / 24_000.0;
                let f = 180.0 + 70.0 * c as f32;
                0.3 * (0.5 + 0.5 * (t * 3.0).sin()) * (t * f * std::f32::consts::TAU).sin()
            })
            .collect()
    }

    /// `frames` steps of conversation `c` on `e`: each output frame's bits, and the text.
    fn talk(e: &mut dyn Engine, c: usize, frames: usize) -> (Vec<Vec<u32>>, String) {
        let (mut audio, mut text) = (Vec::new(), String::new());
        let mut out = vec![f32::NAN; FRAME_SAMPLES];
        for t in 0..frames {
            e.step(&input(c, t), &mut out, &mut text).unwrap();
            audio.push(out.iter().map(|v| v.to_bits()).collect());
        }
        (audio, text)
    }

    /// Three conversations sharing the hub's steps give each what it gives alone: the same
    /// text and, bit for bit, the same audio.
    #[test]
    fn conversations_in_one_step_match_each_alone() {
        let dir = tempfile::tempdir().unwrap();
        let (spec, cfg) = rig(dir.path());
        let frames = 20;
        let alone: Vec<_> = (0..3)
            .map(|c| {
                let mut e = super::super::load(&spec, &cfg).unwrap();
                talk(e.as_mut(), c, frames)
            })
            .collect();
        let batch = super::super::load_batch(&spec, &cfg, 3).unwrap();
        // Rounds wait for every active conversation: all three share each step.
        let wait = Duration::from_secs(10);
        let hub = Hub::start(
            Box::new(batch),
            Timing {
                period: wait,
                gather: wait,
            },
        )
        .unwrap();
        let convs: Vec<_> = (0..3)
            .map(|_| hub.join(JoinRequest::default()).unwrap())
            .collect();
        let together: Vec<_> = convs
            .into_iter()
            .enumerate()
            .map(|(c, mut conv)| std::thread::spawn(move || talk(&mut conv, c, frames)))
            .collect::<Vec<_>>()
            .into_iter()
            .map(|t| t.join().unwrap())
            .collect();
        let stats = hub.stats();
        let steps = stats.steps.load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(
            steps, frames as u64,
            "every step held all three conversations"
        );
        for (c, (a, b)) in alone.iter().zip(&together).enumerate() {
            assert_eq!(a.1, b.1, "conversation {c}: text");
            assert!(a.0 == b.0, "conversation {c}: audio differs");
            assert!(a
                .0
                .iter()
                .flatten()
                .any(|&v| f32::from_bits(v).abs() > 1e-6));
        }
        assert_ne!(
            alone[0].0, alone[1].0,
            "the conversations differ from each other"
        );
    }
}
