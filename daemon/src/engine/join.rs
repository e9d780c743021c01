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

/// A persona a conversation asks for by what it is (resolved to a [`Persona`] by the model's
/// persona cache before the conversation joins).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PersonaRequest {
    /// A configured `[personas.NAME]`.
    Named(String),
    /// NVIDIA's server's query parameters: a voice preset's name (`voice_prompt`) and a role
    /// (`text_prompt`), either may be absent.
    Prompt {
        /// A preset name under the model's `voices` folder.
        voice: Option<String>,
        /// The role text.
        role: Option<String>,
    },
}

impl std::fmt::Display for PersonaRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PersonaRequest::Named(n) => write!(f, "{n}"),
            PersonaRequest::Prompt { voice, role } => {
                let words = role.as_deref().map_or(0, |r| r.split_whitespace().count());
                let voice = voice.as_deref().unwrap_or("no voice");
                write!(f, "session prompt ({voice}, {words}-word role)")
            }
        }
    }
}
