//! The prompted states a model's conversations ask for (`[personas.NAME]`, or a session's own
//! voice and role prompt), each computed once on the asking thread and then shared: a
//! conversation's slot gets a copy at join, within one step's time.

use super::persona;
use crate::config::Config;
use crate::engine::{Persona, PersonaRequest};
use crate::model_spec::ModelSpec;
use moshid_models::lm::{LmGen, LmModel, PromptedState, Sampling};
use moshid_models::mimi::Mimi;
use moshid_models::tokenizer::TextTokenizer;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

/// Session prompts kept in memory at once (named personas are all kept, and on disk).
const SESSION_PROMPTS_KEPT: usize = 8;

/// Why a persona cannot be had (the session gets this as its error message).
#[derive(Debug, thiserror::Error)]
pub enum PersonaError {
    /// Not a configured `[personas]` name.
    #[error("unknown persona {name:?}: {known}")]
    Unknown {
        /// What was asked.
        name: String,
        /// The configured names, or how to add one.
        known: String,
    },
    /// A session may name voice presets only, never files of the device.
    #[error(
        "voice_prompt {0:?}: give a voice preset's name (a .pt or .wav under the model's \
         voices folder), not a path"
    )]
    VoicePath(String),
    /// The model is Moshi: it has no prompt phase.
    #[error(
        "this model is Moshi, which takes no persona: personas need a PersonaPlex model \
         (nvidia/personaplex-7b-v1)"
    )]
    NotPersonaPlex,
    /// Reading the voice or running the prompt failed.
    #[error("persona {name}: {why}")]
    Prompt {
        /// The persona.
        name: String,
        /// What went wrong.
        why: String,
    },
}

/// The prompt runner: one generator and one Mimi (for WAV voices); one prompt at a time.
struct Runner {
    gen: Option<LmGen>,
    mimi: Mimi,
}

/// Cheap to clone; every clone shares the states.
#[derive(Clone)]
pub struct PersonaCache {
    inner: Arc<Inner>,
}

struct Inner {
    spec: ModelSpec,
    cfg: Config,
    lm: Arc<LmModel>,
    sampling: Sampling,
    tokenizer: TextTokenizer,
    runner: Mutex<Runner>,
    states: Mutex<Kept>,
}

/// The states computed so far, and the order session prompts came in (oldest first).
#[derive(Default)]
struct Kept {
    by_request: HashMap<PersonaRequest, Arc<PromptedState>>,
    sessions: VecDeque<PersonaRequest>,
}

impl PersonaCache {
    /// The cache of the model `lm` loaded from `spec` with `cfg` (its `[personas]`).
    pub(super) fn new(
        spec: &ModelSpec,
        cfg: &Config,
        lm: Arc<LmModel>,
        tokenizer: TextTokenizer,
        mimi: Mimi,
    ) -> PersonaCache {
        let inner = Inner {
            spec: spec.clone(),
            cfg: cfg.clone(),
            lm,
            sampling: cfg.sampling.sampling(),
            tokenizer,
            runner: Mutex::new(Runner { gen: None, mimi }),
            states: Mutex::new(Kept::default()),
        };
        PersonaCache {
            inner: Arc::new(inner),
        }
    }

    /// The configured `[personas]` names, sorted (empty for a Moshi model).
    pub fn names(&self) -> Vec<String> {
        if !self.inner.spec.lm_config.is_personaplex() {
            return Vec::new();
        }
        let mut n: Vec<String> = self.inner.cfg.personas.keys().cloned().collect();
        n.sort();
        n
    }

    /// The prompted state `r` asks for: from memory, else from disk or by running the prompt
    /// on this thread (the first use of a persona says in the log how long it took).
    pub fn get(&self, r: &PersonaRequest) -> Result<Persona, PersonaError> {
        self.check(r)?;
        let name = r.to_string();
        if let Some(s) = self.kept(r) {
            return Ok(Persona { name, state: s });
        }
        let i = &self.inner;
        let Ok(mut runner) = i.runner.lock() else {
            return Err(self.failed(r, "an earlier prompt run panicked"));
        };
        // Asked for by another session meanwhile: computed while this one waited.
        if let Some(s) = self.kept(r) {
            return Ok(Persona { name, state: s });
        }
        let Runner { gen, mimi } = &mut *runner;
        let gen = match gen {
            Some(g) => g,
            None => gen.insert(
                LmGen::new(i.lm.clone(), i.sampling, i.cfg.model.context)
                    .map_err(|e| self.failed(r, &e.to_string()))?,
            ),
        };
        let state = match r {
            PersonaRequest::Named(n) => persona::named(&i.spec, &i.cfg, n, gen, &i.tokenizer, mimi),
            PersonaRequest::Prompt { voice, role } => {
                let (v, t) = (voice.as_deref(), role.as_deref());
                persona::adhoc(&i.spec, v, t, gen, &i.tokenizer, mimi)
            }
        }
        .map_err(|e| self.failed(r, &format!("{e:#}")))?;
        let state = Arc::new(state);
        self.keep(r, state.clone());
        Ok(Persona { name, state })
    }

    /// Refuses what cannot be served before any work: a Moshi model, an unknown name, a
    /// path as a voice.
    fn check(&self, r: &PersonaRequest) -> Result<(), PersonaError> {
        if !self.inner.spec.lm_config.is_personaplex() {
            return Err(PersonaError::NotPersonaPlex);
        }
        match r {
            PersonaRequest::Named(n) if !self.inner.cfg.personas.contains_key(n) => {
                let names = self.names();
                let known = if names.is_empty() {
                    "none is configured: add a [personas.NAME] table to the config".to_string()
                } else {
                    format!("configured: {}", names.join(", "))
                };
                Err(PersonaError::Unknown {
                    name: n.clone(),
                    known,
                })
            }
            PersonaRequest::Prompt { voice: Some(v), .. }
                if v.contains(['/', '\\']) || v.starts_with('.') || v.is_empty() =>
            {
                Err(PersonaError::VoicePath(v.clone()))
            }
            _ => Ok(()),
        }
    }

    fn failed(&self, r: &PersonaRequest, why: &str) -> PersonaError {
        PersonaError::Prompt {
            name: r.to_string(),
            why: why.to_string(),
        }
    }

    fn kept(&self, r: &PersonaRequest) -> Option<Arc<PromptedState>> {
        let k = self.inner.states.lock().ok()?;
        k.by_request.get(r).cloned()
    }

    /// Keeps `s`; a session prompt beyond [`SESSION_PROMPTS_KEPT`] forgets the oldest one.
    fn keep(&self, r: &PersonaRequest, s: Arc<PromptedState>) {
        let Ok(mut k) = self.inner.states.lock() else {
            return;
        };
        if matches!(r, PersonaRequest::Prompt { .. }) {
            k.sessions.push_back(r.clone());
            if k.sessions.len() > SESSION_PROMPTS_KEPT {
                if let Some(old) = k.sessions.pop_front() {
                    k.by_request.remove(&old);
                }
            }
        }
        k.by_request.insert(r.clone(), s);
    }
}

#[cfg(test)]
#[path = "persona_cache_tests.rs"]
mod tests;
