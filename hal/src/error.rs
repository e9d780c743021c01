//! The one error type of the hal: every variant says what went wrong and what to do.

use std::path::PathBuf;

/// Errors from audio files, devices, resampling and echo cancellation.
#[derive(Debug, thiserror::Error)]
pub enum HalError {
    /// A file could not be opened, read or written.
    #[error("{path}: {error}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error (in the message, not a `source`, so that it is printed once).
        error: std::io::Error,
    },
    /// A file is not a usable WAV file.
    #[error("{path}: {reason}")]
    Wav {
        /// The file.
        path: PathBuf,
        /// What was wrong and what to do.
        reason: String,
    },
    /// The resampler rejected its configuration or input.
    #[error("resampler: {0}")]
    Resample(String),
    /// A configuration value is out of range.
    #[error("invalid audio configuration: {0}")]
    Config(String),
    /// An audio device could not be opened, configured or used.
    #[error("audio device {device:?}: {reason}")]
    Device {
        /// The device name as given.
        device: String,
        /// What was wrong and what to do.
        reason: String,
    },
    /// A running stream stopped for good (its device or file failed); says why.
    #[error("{0}")]
    Stream(String),
    /// The echo canceller could not be built or failed.
    #[error("echo canceller: {0}")]
    Aec(String),
}
