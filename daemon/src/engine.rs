//! The model behind a small trait: 80 ms of user audio in, 80 ms of Moshi audio and
//! maybe a piece of text out. The pipeline knows nothing else about the models, which
//! keeps it testable with a scripted engine.

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
