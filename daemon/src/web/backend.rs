//! What the web endpoint needs from the rest of the daemon, as one small trait: the model
//! (taken for one session at a time), the device's state and its controls. The server and
//! the sessions know nothing else, so they run against the offline demo's model as well as
//! against the appliance's supervisor.

use super::params::SessionSampling;
use crate::control::StateSnapshot;
use crate::engine::PersonaRequest;
use serde::Serialize;
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

/// The device's state as the page reads it (`/api/state`), one JSON object either way.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum DeviceState {
    /// The appliance: the supervisor's state (what MQTT publishes) and the voices it offers.
    Appliance {
        /// The state MQTT publishes.
        #[serde(flatten)]
        snapshot: StateSnapshot,
        /// Voices the page may switch to.
        voices: Vec<String>,
        /// Mean model step, ms (one decimal).
        step_ms: f64,
    },
    /// The offline demo's model, serving the page alone.
    Demo(DemoState),
}

/// The offline demo's state (the appliance's field names, for the same page).
#[derive(Debug, Clone, Serialize)]
pub struct DemoState {
    /// Conversations in progress (web sessions sharing the model's steps).
    pub conversations: usize,
    /// Their clients' addresses.
    pub clients: Vec<String>,
    /// `conversation` while a web client talks, else `idle`.
    pub phase: &'static str,
    /// `web` during a conversation, else null.
    pub endpoint: Option<&'static str>,
    /// The web client's address during a conversation, else null.
    pub client: Option<String>,
    /// The one voice served.
    pub voice: String,
    /// Microphone mute.
    pub muted: bool,
    /// Output volume 0-100.
    pub volume: u8,
    /// Last model step, ms (one decimal).
    pub step_ms: f64,
    /// Step time over the 80 ms frame (three decimals).
    pub rtf: f64,
    /// Model steps since start.
    pub steps: u64,
    /// Conversation frames those steps served (frames / steps: the mean batch).
    pub frames: u64,
    /// Input frames the web path dropped (the model was behind).
    pub web_dropped_input: u64,
    /// Output frames a slow client could not take.
    pub web_dropped_output: u64,
}

/// `/api/personas`: the personas a session may ask for with `/api/chat?persona=NAME`.
#[derive(Debug, Clone, Serialize)]
pub struct PersonaList {
    /// The configured `[personas]` names, sorted (empty: the model takes none).
    pub personas: Vec<String>,
}

/// The device, as the web endpoint sees it.
pub trait Backend: Send + Sync + 'static {
    /// What the metadata reports.
    fn model_info(&self) -> ModelInfo;
    /// Web sessions served at once (each holds a conversation of the shared model).
    fn max_conversations(&self) -> usize {
        1
    }
    /// Takes a conversation for a web session from `peer` (the caller holds at most
    /// [`Backend::max_conversations`] at once). Dropping the [`Talk`] gives it back.
    fn open(&self, peer: SocketAddr, sampling: SessionSampling) -> Result<Box<dyn Talk>, String>;
    /// [`Backend::open`] for a session that asked for a persona (`persona=`, or NVIDIA's
    /// `voice_prompt=`/`text_prompt=`): its conversation starts from that persona's prompted
    /// state. May block (a persona's first use runs its prompt). By default no persona is
    /// served: such a session is refused with a message that says so.
    fn open_as(
        &self,
        peer: SocketAddr,
        sampling: SessionSampling,
        persona: Option<&PersonaRequest>,
    ) -> Result<Box<dyn Talk>, String> {
        match persona {
            Some(p) => Err(format!(
                "persona {p}: this server takes no persona per session (the offline demo \
                 with a PersonaPlex model and [personas] does)"
            )),
            None => self.open(peer, sampling),
        }
    }
    /// The `[personas]` names a session may ask for (`/api/personas`).
    fn personas(&self) -> Vec<String> {
        Vec::new()
    }
    /// The device's state for the page.
    fn state(&self) -> DeviceState;
    /// Applies a control.
    fn control(&self, c: Control) -> Result<(), String>;
    /// Counts frames the web path dropped (oldest input when the model is behind, output a
    /// slow client could not take), for the state.
    fn count_dropped(&self, input: u64, output: u64);
    /// The room's conversation for the kiosk screen from transcript piece `since` on
    /// (None: this server has no room, as the offline demo).
    fn room(&self, _since: u64) -> Option<crate::room::RoomView> {
        None
    }
    /// Starts or stops the room's conversation (as `set/conversation`).
    fn room_conversation(&self, _on: bool) -> Result<(), String> {
        Err("this server has no room (the offline demo): use Talk for a browser session".into())
    }
}

/// One session's hold on the model, used from that session's model thread.
pub trait Talk: Send {
    /// One 80 ms step: the user's frame in, Moshi's frame out (mute and volume applied),
    /// text pieces appended to `text`.
    fn step(&mut self, input: &[f32], output: &mut [f32], text: &mut String) -> Result<(), String>;
    /// Why the device ended the session (`set/conversation OFF`), if it did.
    fn ended(&self) -> Option<String>;
}
