//! Who the conversation is with: the room (the device's microphone and speaker) or a
//! remote client. The pipeline always holds the room; a remote endpoint takes the
//! conversation over (`Pipeline::take_over`) and hands it back when its source ends or on
//! `Pipeline::give_back`. Meanwhile the room's devices stay open: the microphone's frames
//! are read and dropped, the speaker plays silence.
//!
//! A new endpoint (a WebSocket session, a file, a test) is a [`Source`] and a [`Sink`]:
//! - `Source::recv` hands over 80 ms frames as they arrive (its clock drives the model:
//!   one step per frame) and returns `SoundError::Ended` when the client leaves;
//! - `Sink::play` must not block for long (queue and drop for a slow client).
//!
//! Then the supervisor gets `Event::TakeOver(Endpoint::remote(..))` (and `Event::GiveBack`
//! to end it early); everything else follows.

use crate::engine::SamplingOverride;
use crate::sound::{Sink, Source};

/// An audio endpoint and its name: `room`, or a remote's kind and client, e.g.
/// `web 10.0.0.7:5123` (the state shows `endpoint` = `web`, `client` = `10.0.0.7:5123`).
pub struct Endpoint {
    /// Shown in the MQTT state and STATUS.
    pub name: String,
    /// Where the user's voice comes from.
    pub source: Box<dyn Source>,
    /// Where Moshi's voice goes.
    pub sink: Box<dyn Sink>,
    /// Run the room's echo canceller on this input (a browser cancels its own echo).
    pub cancel_echo: bool,
    /// Sampling for this conversation (a web session's query parameters); the configured
    /// sampling comes back when the room has the conversation again.
    pub sampling: Option<SamplingOverride>,
}

impl Endpoint {
    /// The room's microphone and speaker.
    pub fn room(source: Box<dyn Source>, sink: Box<dyn Sink>) -> Endpoint {
        Endpoint {
            name: "room".into(),
            source,
            sink,
            cancel_echo: true,
            sampling: None,
        }
    }

    /// A remote client's audio (no echo cancellation: the client does its own).
    pub fn remote(
        name: impl Into<String>,
        source: Box<dyn Source>,
        sink: Box<dyn Sink>,
    ) -> Endpoint {
        Endpoint {
            name: name.into(),
            source,
            sink,
            cancel_echo: false,
            sampling: None,
        }
    }
}
