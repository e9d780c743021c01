//! The room as the pipeline sees it: the device's microphone and speaker, one [`Source`]
//! and one [`Sink`]. (Web sessions are conversations of their own on the shared model,
//! beside the room: see `hub.rs`.)
//!
//! - `Source::recv` hands over 80 ms frames as they arrive (its clock drives the model:
//!   one step per frame) and returns `SoundError::Ended` when the source ends;
//! - `Sink::play` must not block for long.

use crate::sound::{Sink, Source};

/// The room's audio devices.
pub struct Endpoint {
    /// Where the user's voice comes from.
    pub source: Box<dyn Source>,
    /// Where Moshi's voice goes.
    pub sink: Box<dyn Sink>,
}

impl Endpoint {
    /// The room's microphone and speaker.
    pub fn room(source: Box<dyn Source>, sink: Box<dyn Sink>) -> Endpoint {
        Endpoint { source, sink }
    }
}
