//! Audio hardware abstraction for moshid: capture/playback devices (ALSA, WAV files),
//! resampling to and from Mimi's 24 kHz, and echo cancellation.

/// Mimi's sample rate: everything between the hal and the models is 24 kHz mono f32.
pub const MODEL_RATE: u32 = 24_000;
/// One Mimi frame: 80 ms at 24 kHz.
pub const FRAME_SAMPLES: usize = 1920;

mod error;
pub mod aec;
pub mod resample;
pub mod wav;

pub use error::HalError;
