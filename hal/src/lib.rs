//! Audio hardware abstraction for moshid: capture/playback devices (ALSA, WAV files),
//! resampling to and from Mimi's 24 kHz, and echo cancellation.

/// Mimi's sample rate: everything between the hal and the models is 24 kHz mono f32.
pub const MODEL_RATE: u32 = 24_000;
/// One Mimi frame: 80 ms at 24 kHz.
pub const FRAME_SAMPLES: usize = 1920;

pub mod aec;
pub mod alsa;
pub mod device;
mod error;
#[doc(hidden)]
pub mod fuzz;
pub mod resample;
pub mod stream;
pub mod wav;
pub mod wavfile;

pub use crate::alsa::list_devices;
pub use aec::{AecOptions, EchoCanceller};
pub use device::{CaptureDevice, DeviceError, DeviceParams, PlaybackDevice, SampleFormat};
pub use error::HalError;
pub use stream::{
    CaptureConfig, CaptureStream, Endpoint, Frame, PlaybackConfig, PlaybackStream, StreamState,
    StreamStats,
};
