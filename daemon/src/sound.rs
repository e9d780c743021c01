//! Audio as the pipeline sees it: a source of 80 ms mono frames with capture timestamps,
//! and a sink that plays mono frames. hal's capture and playback streams implement them
//! (`audio.rs`: ALSA PCMs and WAV files); a remote client (`endpoint.rs`) implements them
//! too. Device details (channels, resampling, reopening) live behind these traits.

use std::time::{Duration, Instant};

/// Errors from audio endpoints.
#[derive(Debug, thiserror::Error)]
pub enum SoundError {
    /// The source has no more audio (end of a WAV file).
    #[error("end of input")]
    Ended,
    /// A device failed.
    #[error("{0}")]
    Device(String),
}

/// One captured frame: `FRAME_SAMPLES` mono samples at 24 kHz.
#[derive(Debug, Clone)]
pub struct InFrame {
    /// The samples.
    pub samples: Vec<f32>,
    /// When the first sample was captured.
    pub captured_at: Instant,
}

/// A microphone.
pub trait Source: Send {
    /// Waits up to `timeout` for the next frame (`Ok(None)` on timeout).
    fn recv(&mut self, timeout: Duration) -> Result<Option<InFrame>, SoundError>;
    /// Frames already waiting (used to skip when inference falls behind).
    fn backlog(&self) -> usize;
    /// A file read as fast as the model takes it (`demo --fast`): no clock to keep up
    /// with, so the pipeline skips no input and waits for the speaker instead of dropping
    /// output. Real-time sources (a microphone, a client) are not.
    fn is_batch(&self) -> bool {
        false
    }
    /// Gives a frame's buffer back for reuse (no allocation per frame).
    fn recycle(&mut self, _frame: InFrame) {}
}

/// A speaker.
pub trait Sink: Send {
    /// Plays one mono frame; blocks while the device buffer is full (that is the pacing).
    fn play(&mut self, samples: &[f32]) -> Result<(), SoundError>;
    /// Audio written but not yet heard, if the device can tell.
    fn delay(&self) -> Duration {
        Duration::ZERO
    }
    /// Flushes everything written (end of a file-backed run).
    fn finish(&mut self) -> Result<(), SoundError> {
        Ok(())
    }
    /// The far end exactly as the device got it (silence fill included), for the echo
    /// canceller. Called once, before playback starts; `None` when the sink cannot tell, and
    /// the pipeline then uses the frames it queued for playback.
    fn echo_reference(&mut self) -> Option<EchoReference> {
        None
    }
}

/// What the speaker device was handed, frame by frame, plus a way to give the buffers back.
pub struct EchoReference {
    /// 80 ms mono 24 kHz frames in the order the device got them.
    pub frames: crossbeam_channel::Receiver<moshid_hal::Frame>,
    /// Used buffers go back to the sink for reuse.
    pub spare: crossbeam_channel::Sender<Vec<f32>>,
    /// The playback device's parameters: its buffer seeds the canceller's delay search.
    pub playback: Option<moshid_hal::DeviceParams>,
}

/// Echo cancellation: removes `far` (what the speaker played) from `near` (the mic).
/// Not `Send`: cancellers may hold thread-local state, so they are built on the
/// inference thread by an [`EchoCancelFactory`].
pub trait EchoCancel {
    /// Processes one frame in place.
    fn process(&mut self, far: &[f32], near: &mut [f32]);
}

/// Builds the echo canceller on the thread that will use it, for the speaker whose
/// parameters it is given (None: the speaker cannot tell).
pub type EchoCancelFactory = Box<
    dyn FnOnce(Option<&moshid_hal::DeviceParams>) -> Result<Box<dyn EchoCancel>, String> + Send,
>;
