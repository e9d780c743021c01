//! What the web endpoint needs from the rest of the daemon, as one small trait: the model
//! (taken for one session at a time), the device's state and its controls. The server and
//! the sessions know nothing else, so they run against the offline demo's model as well as
//! against the appliance's supervisor.

use super::params::SessionSampling;
use std::net::SocketAddr;

/// Facts for the metadata message.
#[derive(Debug, Clone, Default)]
pub struct ModelInfo {
    /// LM weights file.
    pub lm_file: String,
    /// Mimi weights file.
    pub mimi_file: String,
    /// Configured sampling (what a session gets unless it asks otherwise).
    pub text_temperature: f64,
    /// Configured text top-k.
    pub text_topk: usize,
    /// Configured audio temperature.
    pub audio_temperature: f64,
    /// Configured audio top-k.
    pub audio_topk: usize,
}

/// A control from the page.
#[derive(Debug, Clone, PartialEq)]
pub enum Control {
    /// Microphone mute (the model hears silence).
    Mute(bool),
    /// Output volume 0-100.
    Volume(u8),
    /// Switch the voice preset.
    Voice(String),
}

/// The device, as the web endpoint sees it.
pub trait Backend: Send + Sync + 'static {
    /// What the metadata reports.
    fn model_info(&self) -> ModelInfo;
    /// Takes the conversation for a web session from `peer` (the caller guarantees one
    /// session at a time). Dropping the [`Talk`] gives it back to the room.
    fn open(&self, peer: SocketAddr, sampling: SessionSampling) -> Result<Box<dyn Talk>, String>;
    /// The device's state for the page (a JSON object).
    fn state(&self) -> serde_json::Value;
    /// Applies a control.
    fn control(&self, c: Control) -> Result<(), String>;
    /// Counts frames the web path dropped (oldest input when the model is behind, output a
    /// slow client could not take), for the state.
    fn count_dropped(&self, input: u64, output: u64);
}

/// One session's hold on the model, used from that session's model thread.
pub trait Talk: Send {
    /// One 80 ms step: the user's frame in, Moshi's frame out (mute and volume applied),
    /// text pieces appended to `text`.
    fn step(&mut self, input: &[f32], output: &mut [f32], text: &mut String) -> Result<(), String>;
    /// Why the device ended the session (`set/conversation OFF`), if it did.
    fn ended(&self) -> Option<String>;
}
