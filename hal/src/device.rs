//! Device traits shared by the backends (one file each: `alsa.rs`, `wavfile.rs`).

use crate::HalError;

/// Sample format on the device side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SampleFormat {
    /// Signed 16-bit little endian.
    S16,
    /// Signed 32-bit little endian.
    S32,
    /// 32-bit float little endian.
    F32,
}

impl std::str::FromStr for SampleFormat {
    type Err = HalError;
    fn from_str(s: &str) -> Result<Self, HalError> {
        match s.to_ascii_uppercase().as_str() {
            "S16" | "S16_LE" => Ok(Self::S16),
            "S32" | "S32_LE" => Ok(Self::S32),
            "F32" | "FLOAT" | "FLOAT_LE" => Ok(Self::F32),
            _ => Err(HalError::Config(format!(
                "unknown sample format {s:?}; use S16, S32 or F32"
            ))),
        }
    }
}

/// What a device actually agreed to (it may differ from what was asked).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceParams {
    /// Frames per second.
    pub rate: u32,
    /// Interleaved channels.
    pub channels: usize,
    /// Sample format on the wire.
    pub format: SampleFormat,
    /// Frames per period (one read or write).
    pub period_frames: usize,
    /// Frames in the device buffer.
    pub buffer_frames: usize,
}

/// How a device read or write failed.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// Overrun (capture) or underrun (playback); call `recover` and go on.
    #[error("xrun (buffer overrun/underrun)")]
    Xrun,
    /// The device is gone (unplugged, disconnected); reopen it.
    #[error("device lost: {0}")]
    Lost(String),
    /// A file-backed capture reached its end.
    #[error("end of stream")]
    EndOfStream,
    /// A failure reopening cannot cure (a WAV file that cannot be written: a full disk, a
    /// device that refuses writes): the stream stops with this as its error.
    #[error("{0}")]
    Failed(String),
}

/// A source of interleaved f32 audio at the device's rate and channel count.
pub trait CaptureDevice: Send {
    /// The negotiated parameters.
    fn params(&self) -> &DeviceParams;
    /// Blocks until some frames are read into `buf` (interleaved, `buf.len()` a multiple of
    /// the channel count); returns the number of frames.
    fn read(&mut self, buf: &mut [f32]) -> Result<usize, DeviceError>;
    /// Restarts the device after [`DeviceError::Xrun`].
    fn recover(&mut self) -> Result<(), DeviceError>;
}

/// A sink of interleaved f32 audio at the device's rate and channel count.
pub trait PlaybackDevice: Send {
    /// The negotiated parameters.
    fn params(&self) -> &DeviceParams;
    /// Blocks until some frames of `buf` are written; returns the number of frames.
    fn write(&mut self, buf: &[f32]) -> Result<usize, DeviceError>;
    /// Restarts the device after [`DeviceError::Xrun`].
    fn recover(&mut self) -> Result<(), DeviceError>;
    /// Plays out what is buffered and closes (finalises files).
    fn finish(&mut self) -> Result<(), DeviceError>;
}

/// Opens (and after a loss, reopens) a capture device.
pub type CaptureOpener = Box<dyn FnMut() -> Result<Box<dyn CaptureDevice>, HalError> + Send>;
/// Opens (and after a loss, reopens) a playback device.
pub type PlaybackOpener = Box<dyn FnMut() -> Result<Box<dyn PlaybackDevice>, HalError> + Send>;
