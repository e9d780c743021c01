//! Several conversations on one model, stepped together: every linear layer reads its
//! weights once per step for all of them (M = active conversations in the q8_0/q4_0 CPU
//! kernels and in candle's matmuls), attention runs per conversation over its own ring.
//!
//! Equality with a conversation run alone ([`super::LmGen`], a batch of one through the same
//! code): on the q8_0/q4_0 CPU kernels (`lm::qgemv`) every row's arithmetic is independent
//! of the others, so a slot's logits are bit-identical to the batch-of-one run; on candle's
//! dense matmuls (f32/f16/bf16 safetensors) the GEMM may block a 1-row and an M-row product
//! differently, so logits agree to float rounding (the parity tests bound it at 1e-4).

use std::sync::Arc;

use super::gen::{step_many, Conversation};
use super::{LmError, LmModel, Sampling, StepOut, StepTiming, AUDIO_CODEBOOKS};

/// A conversation's place in an [`LmBatch`]: valid from [`LmBatch::join`] to
/// [`LmBatch::leave`]. The generation counter makes a stale id (a slot left and taken by
/// another conversation since) an error instead of a window into someone else's talk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SlotId {
    index: usize,
    generation: u64,
}

impl SlotId {
    /// The slot's row number (0-based), stable while the conversation holds it.
    pub fn index(&self) -> usize {
        self.index
    }
}

struct Slot {
    /// Kept after [`LmBatch::leave`], so that the next conversation reuses its KV memory.
    conv: Option<Conversation>,
    active: bool,
    generation: u64,
}

/// Up to `capacity` conversations over one `Arc<LmModel>`, each with its own KV ring and
/// position, delay buffers, sampling settings and RNG. Conversations join, leave and reset
/// at any step without disturbing the others; a step runs only the slots given a frame
/// (the others are masked and cost nothing).
pub struct LmBatch {
    model: Arc<LmModel>,
    context: usize,
    slots: Vec<Slot>,
}

impl LmBatch {
    /// An empty batch of `capacity` slots with a temporal window of `context` steps each.
    /// KV caches are allocated when a slot is first taken.
    pub fn new(
        model: impl Into<Arc<LmModel>>,
        capacity: usize,
        context: usize,
    ) -> Result<Self, LmError> {
        if capacity == 0 {
            return Err(LmError::Config(
                "a batch needs at least one slot: use a capacity of 1 or more".into(),
            ));
        }
        let model = model.into();
        super::model::MemoryEstimate::checked_kv_bytes(model.config(), context, model.dtype())?;
        let slots = (0..capacity)
            .map(|_| Slot {
                conv: None,
                active: false,
                generation: 0,
            })
            .collect();
        Ok(Self {
            model,
            context,
            slots,
        })
    }

    /// The shared model.
    pub fn model(&self) -> &Arc<LmModel> {
        &self.model
    }

    /// Slots in all.
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// Slots held by a conversation.
    pub fn active(&self) -> usize {
        self.slots.iter().filter(|s| s.active).count()
    }

    /// Bytes of KV cache allocated (slots taken at least once).
    pub fn cache_bytes(&self) -> u64 {
        let conv = self.slots.iter().filter_map(|s| s.conv.as_ref());
        conv.map(Conversation::cache_bytes).sum()
    }

    /// A new conversation in the first free slot, from step 0 with `sampling`; refused
    /// when every slot is taken or its KV cache cannot be allocated.
    pub fn join(&mut self, sampling: Sampling) -> Result<SlotId, LmError> {
        sampling.validate()?;
        let Some(index) = self.slots.iter().position(|s| !s.active) else {
            return Err(LmError::Config(format!(
                "all {} conversation slots are taken: wait for one to end or raise the capacity",
                self.slots.len()
            )));
        };
        let slot = &mut self.slots[index];
        match slot.conv.as_mut() {
            Some(c) => {
                c.set_sampling(sampling, None);
                c.reset();
            }
            None => slot.conv = Some(Conversation::new(&self.model, sampling, self.context)?),
        }
        slot.active = true;
        slot.generation += 1;
        Ok(SlotId {
            index,
            generation: slot.generation,
        })
    }

    /// A new conversation in the first free slot that continues from a persona's prompted
    /// state (made on this batch's model and context) instead of step 0: the state is
    /// copied into the slot, so one prompt serves any number of conversations.
    pub fn join_prompted(
        &mut self,
        state: &super::PromptedState,
        sampling: Sampling,
    ) -> Result<SlotId, LmError> {
        let id = self.join(sampling)?;
        if let Err(e) = self.slot_mut(id)?.restore(&state.snap) {
            self.leave(id)?;
            return Err(e);
        }
        Ok(id)
    }

    /// Restarts `id`'s conversation from a persona's prompted state (made on this batch's
    /// model and context), with its sampling and RNG at the seed.
    pub fn restore_prompted(
        &mut self,
        id: SlotId,
        state: &super::PromptedState,
    ) -> Result<(), LmError> {
        self.slot_mut(id)?.restore(&state.snap)
    }

    /// Ends the conversation in `id`; its slot (and KV memory) goes to the next to join.
    pub fn leave(&mut self, id: SlotId) -> Result<(), LmError> {
        self.slot_mut(id)?;
        self.slots[id.index].active = false;
        Ok(())
    }

    /// Restarts the conversation in `id` from step 0 (RNG back to its seed).
    pub fn reset(&mut self, id: SlotId) -> Result<(), LmError> {
        self.slot_mut(id)?.reset();
        Ok(())
    }

    /// Samples `id`'s tokens with these settings from now on (see [`super::LmGen::set_sampling`]).
    pub fn set_sampling(
        &mut self,
        id: SlotId,
        sampling: Sampling,
        top_k_audio: Option<usize>,
    ) -> Result<(), LmError> {
        sampling.validate()?;
        self.slot_mut(id)?.set_sampling(sampling, top_k_audio);
        Ok(())
    }

    /// Steps run by `id`'s conversation.
    pub fn steps(&self, id: SlotId) -> Result<usize, LmError> {
        Ok(self.slot(id)?.steps())
    }

    /// Text logits of `id`'s last step.
    pub fn last_text_logits(&self, id: SlotId) -> Result<&[f32], LmError> {
        Ok(self.slot(id)?.last_text_logits())
    }

    /// Audio logits of `id`'s last step, `dep_q` rows of `card` entries.
    pub fn last_audio_logits(&self, id: SlotId) -> Result<&[f32], LmError> {
        Ok(self.slot(id)?.last_audio_logits())
    }

    /// Tokens `id` sampled at its last step, before delay re-alignment.
    pub fn last_sampled(&self, id: SlotId) -> Result<(u32, [u32; AUDIO_CODEBOOKS]), LmError> {
        Ok(self.slot(id)?.last_sampled())
    }

    /// Timing of the last step `id` took part in (the whole batch's).
    pub fn last_timing(&self, id: SlotId) -> Result<StepTiming, LmError> {
        Ok(self.slot(id)?.last_timing())
    }

    /// For benchmarks: every taken slot's window marked full (see
    /// [`super::LmGen::fill_context_for_bench`]).
    #[doc(hidden)]
    pub fn fill_context_for_bench(&mut self) -> Result<(), LmError> {
        for c in self.slots.iter_mut().filter_map(|s| s.conv.as_mut()) {
            c.fill_context_for_bench()?;
        }
        Ok(())
    }

    /// One 80 ms step of the conversations in `frames` (each with its user's 8 codes) over
    /// one read of the weights; the other slots do not move. One result per frame, in
    /// order: a stale id, a slot given twice or bad codes fail only that frame.
    pub fn step(&mut self, frames: &[(SlotId, &[u32])]) -> Vec<Result<Option<StepOut>, LmError>> {
        let mut results: Vec<Result<Option<StepOut>, LmError>> = Vec::with_capacity(frames.len());
        let mut taken = vec![false; self.slots.len()];
        let mut rows = Vec::with_capacity(frames.len());
        for &(id, codes) in frames {
            match self.check(id) {
                Ok(()) if !taken[id.index] => {
                    taken[id.index] = true;
                    rows.push((results.len(), id.index, codes));
                    results.push(Ok(None));
                }
                Ok(()) => results.push(Err(LmError::Input(format!(
                    "slot {} was given two frames in one step",
                    id.index
                )))),
                Err(e) => results.push(Err(e)),
            }
        }
        let model = &self.model;
        let mut convs: Vec<&mut Conversation> = Vec::with_capacity(rows.len());
        let mut codes = Vec::with_capacity(rows.len());
        // Slots in row order; each index appears once (checked above).
        let mut by_index: Vec<Option<&mut Conversation>> =
            self.slots.iter_mut().map(|s| s.conv.as_mut()).collect();
        for &(_, index, c) in &rows {
            if let Some(conv) = by_index[index].take() {
                convs.push(conv);
                codes.push(c);
            }
        }
        let mut run = || step_many(model, &mut convs, &codes);
        // On the CPU the whole step runs on a rayon worker, as LmGen's does.
        let outs = if model.device().is_cpu() {
            rayon::scope(|_| run())
        } else {
            run()
        };
        for ((at, _, _), out) in rows.iter().zip(outs) {
            results[*at] = out;
        }
        results
    }

    fn check(&self, id: SlotId) -> Result<(), LmError> {
        match self.slots.get(id.index) {
            Some(s) if s.active && s.generation == id.generation && s.conv.is_some() => Ok(()),
            _ => Err(LmError::Input(format!(
                "slot {} is no longer this conversation's: its conversation left (and the slot may have been taken again)",
                id.index
            ))),
        }
    }

    fn slot(&self, id: SlotId) -> Result<&Conversation, LmError> {
        self.check(id)?;
        self.slots[id.index]
            .conv
            .as_ref()
            .ok_or_else(|| LmError::Input(format!("slot {} holds no conversation", id.index)))
    }

    fn slot_mut(&mut self, id: SlotId) -> Result<&mut Conversation, LmError> {
        self.check(id)?;
        self.slots[id.index]
            .conv
            .as_mut()
            .ok_or_else(|| LmError::Input(format!("slot {} holds no conversation", id.index)))
    }
}
