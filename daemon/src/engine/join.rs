//! What a conversation asks for when it takes a slot of a [`super::BatchModel`]: its
//! sampling and, optionally, a persona to start from.

use super::SamplingOverride;
use moshid_models::lm::PromptedState;
use std::sync::Arc;

/// A persona's prompted state (PersonaPlex: after the voice and role prompts), shared by
/// every conversation that starts from it: a slot copies it at join and at each reset.
#[derive(Clone)]
pub struct Persona {
    /// How the logs name it (a `[personas]` name, or a description of an ad hoc prompt).
    pub name: String,
    /// The state after the prompt.
    pub state: Arc<PromptedState>,
}

impl std::fmt::Debug for Persona {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Persona({:?}, {} steps)", self.name, self.state.steps())
    }
}

/// A conversation's request for a slot.
#[derive(Debug, Clone, Default)]
pub struct JoinRequest {
    /// Sampling settings (None fields keep the configured ones).
    pub sampling: SamplingOverride,
    /// The persona to start from; None: the model's own (`model.persona`, or step 0).
    pub persona: Option<Persona>,
}

impl From<SamplingOverride> for JoinRequest {
    fn from(sampling: SamplingOverride) -> JoinRequest {
        JoinRequest {
            sampling,
            persona: None,
        }
    }
}
