//! The model behind a small trait: 80 ms of user audio in, 80 ms of Moshi audio and
//! maybe a piece of text out. The pipeline knows nothing else about the models, which
//! keeps it testable with a scripted engine.

mod join;
mod solo;

pub use join::{JoinRequest, Persona, PersonaRequest};
pub use solo::Solo;

/// Errors from a model step.
#[derive(Debug, thiserror::Error)]
#[error("model step failed: {0}")]
pub struct EngineError(pub String);

/// Sampling a conversation asks for (a web session's query parameters); None keeps the
/// configured value.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SamplingOverride {
    /// Text temperature.
    pub temp_text: Option<f64>,
    /// Audio temperature.
    pub temp_audio: Option<f64>,
    /// Text top-k.
    pub top_k_text: Option<usize>,
    /// Audio top-k.
    pub top_k_audio: Option<usize>,
    /// Seed of the sampling RNG.
    pub seed: Option<u64>,
}

/// One streaming speech-to-speech model.
pub trait Engine: Send {
    /// Processes one frame (`FRAME_SAMPLES` at 24 kHz) of user audio. Writes one frame of
    /// model audio into `output` (silence while the model has none yet) and appends any
    /// text the model produced to `text`.
    fn step(
        &mut self,
        input: &[f32],
        output: &mut [f32],
        text: &mut String,
    ) -> Result<(), EngineError>;
    /// Forgets the conversation (codec and LM state).
    fn reset(&mut self);
    /// Samples the next conversations with these settings (the default restores the
    /// configured ones); engines that do not sample ignore it.
    fn set_sampling(&mut self, _s: &SamplingOverride) {}
    /// A one-line description for logs and STATUS.
    fn describe(&self) -> String;
}

/// One conversation's frame in a [`BatchModel`] step.
pub struct BatchFrame<'a> {
    /// The conversation's slot (from [`BatchModel::join`]).
    pub slot: usize,
    /// 80 ms of user audio.
    pub input: &'a [f32],
    /// Where the model's 80 ms go (silence when the model has none yet or the frame failed).
    pub output: &'a mut [f32],
    /// Text the model produced is appended here.
    pub text: &'a mut String,
    /// This frame's outcome: a failure costs this conversation's frame only.
    pub result: Result<(), EngineError>,
}

/// A model serving several conversations in one step: each conversation holds a slot with
/// its own streaming state; the weights are read once per step for all of them.
pub trait BatchModel: Send {
    /// Slots in all.
    fn capacity(&self) -> usize;
    /// Starts a conversation in a free slot with this sampling and persona; its slot
    /// number.
    fn join(&mut self, r: &JoinRequest) -> Result<usize, EngineError>;
    /// Ends the conversation in `slot` (the slot becomes free).
    fn leave(&mut self, slot: usize);
    /// Restarts the conversation in `slot`.
    fn reset(&mut self, slot: usize) -> Result<(), EngineError>;
    /// Samples `slot`'s tokens with these settings from now on.
    fn set_sampling(&mut self, slot: usize, s: &SamplingOverride) -> Result<(), EngineError>;
    /// One step of the conversations in `frames` (each slot at most once); the other slots
    /// do not move.
    fn step(&mut self, frames: &mut [BatchFrame<'_>]);
    /// A one-line description for logs and STATUS.
    fn describe(&self) -> String;
    /// The personas its conversations may ask for (a PersonaPlex model's `[personas]` and
    /// session prompts, computed over its weights); None: it takes none.
    fn personas(&self) -> Option<crate::moshi_engine::PersonaCache> {
        None
    }
}
