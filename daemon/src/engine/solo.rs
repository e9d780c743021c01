//! An [`Engine`] (one conversation at a time) as a [`BatchModel`] of one slot, so that a
//! model without a batched path (a remote brain, a scripted test engine) runs under the
//! same hub as the batched ones.

use super::{BatchFrame, BatchModel, Engine, EngineError, JoinRequest};

/// One conversation's engine behind the batched interface.
pub struct Solo {
    engine: Box<dyn Engine>,
    taken: bool,
    /// Why a second conversation is refused.
    refusal: String,
}

impl Solo {
    /// Wraps `engine`.
    pub fn new(engine: Box<dyn Engine>) -> Solo {
        Solo {
            engine,
            taken: false,
            refusal: "the model serves one conversation and it is taken".into(),
        }
    }

    /// Says `why` to a conversation that finds the slot taken (what the engine is, and where
    /// to go instead).
    pub fn with_refusal(mut self, why: &str) -> Solo {
        self.refusal = why.to_string();
        self
    }
}

impl BatchModel for Solo {
    fn capacity(&self) -> usize {
        1
    }

    fn join(&mut self, r: &JoinRequest) -> Result<usize, EngineError> {
        if self.taken {
            return Err(EngineError(self.refusal.clone()));
        }
        if r.persona.is_some() {
            return Err(EngineError(
                "this model takes no persona per conversation".into(),
            ));
        }
        self.engine.set_sampling(&r.sampling);
        self.engine.reset();
        self.taken = true;
        Ok(0)
    }

    fn leave(&mut self, _slot: usize) {
        self.taken = false;
    }

    fn reset(&mut self, _slot: usize) -> Result<(), EngineError> {
        self.engine.reset();
        Ok(())
    }

    fn set_sampling(
        &mut self,
        _slot: usize,
        s: &super::SamplingOverride,
    ) -> Result<(), EngineError> {
        self.engine.set_sampling(s);
        Ok(())
    }

    fn step(&mut self, frames: &mut [BatchFrame<'_>]) {
        for f in frames.iter_mut() {
            f.result = match f.slot {
                0 if self.taken => self.engine.step(f.input, f.output, f.text),
                s => Err(EngineError(format!("conversation slot {s} is not taken"))),
            };
        }
    }

    fn describe(&self) -> String {
        self.engine.describe()
    }
}
