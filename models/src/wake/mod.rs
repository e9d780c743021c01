//! On-device wake word: microWakeWord's streaming int8 models run in Rust, with the
//! TensorFlow Lite Micro audio frontend that feeds them.
//!
//! - [`frontend`]: 16 kHz audio to 40 log-mel-like features every 10 ms (integer arithmetic,
//!   equal to PyPI `pymicro-features`);
//! - [`tflite`] and [`interp`]: the `.tflite` flatbuffer and a small interpreter for the
//!   operators these models use (probabilities equal to `pymicro-wakeword`'s TFLite run);
//! - [`detector`]: features to probabilities, a sliding-window mean and the cutoff;
//! - [`chime`]: the appliance's sounds (wake, end of conversation, error), made in code.
//!
//! The four models `pymicro-wakeword` 2.5.0 ships (Apache-2.0, [`LICENSE`]) are built in.

pub mod chime;
pub mod detector;
mod fft;
pub mod frontend;
pub mod interp;
mod quant;
pub mod tflite;

use serde::Deserialize;

pub use detector::{Detector, Inference};

/// Why a wake-word model cannot be loaded or run.
#[derive(Debug, thiserror::Error)]
pub enum WakeError {
    /// The `.tflite` file is malformed or uses a form the interpreter does not run.
    #[error("wake-word model: {0}")]
    BadModel(String),
    /// The model uses an operator outside the supported set.
    #[error("wake-word model: operator {0} is not supported")]
    UnsupportedOperator(String),
    /// The model's JSON configuration is malformed.
    #[error("wake-word model config: {0}")]
    BadConfig(String),
    /// No built-in model has that name.
    #[error(
        "unknown built-in wake word `{0}` (built in: okay_nabu, hey_jarvis, alexa, hey_mycroft)"
    )]
    UnknownModel(String),
}

/// A model shipped inside the binary.
pub struct Builtin {
    /// Its name (`okay_nabu`, ...).
    pub name: &'static str,
    /// The `.tflite` file.
    pub tflite: &'static [u8],
    /// The `.json` configuration.
    pub json: &'static str,
}

macro_rules! builtin {
    ($name:literal) => {
        Builtin {
            name: $name,
            tflite: include_bytes!(concat!("../../wake/", $name, ".tflite")),
            json: include_str!(concat!("../../wake/", $name, ".json")),
        }
    };
}

/// The built-in models (from PyPI `pymicro-wakeword` 2.5.0, by Kevin Ahrendt).
pub const BUILTIN: &[Builtin] = &[
    builtin!("okay_nabu"),
    builtin!("hey_jarvis"),
    builtin!("alexa"),
    builtin!("hey_mycroft"),
];

/// The built-in models' licence (Apache-2.0).
pub const LICENSE: &str = include_str!("../../wake/LICENSE");

/// A model's JSON configuration (microWakeWord's format; the fields used here).
#[derive(Debug, Clone, Deserialize)]
pub struct ModelConfig {
    /// The phrase, for people (`"Okay Nabu"`).
    pub wake_word: String,
    /// Detection parameters.
    pub micro: MicroConfig,
}

/// The `micro` section of a model's configuration.
#[derive(Debug, Clone, Deserialize)]
pub struct MicroConfig {
    /// A detection is a window mean above this (0-1).
    pub probability_cutoff: f64,
    /// How many inferences the mean covers.
    pub sliding_window_size: usize,
    /// Feature step in milliseconds (must be 10).
    #[serde(default = "ten")]
    pub feature_step_size: u32,
}

fn ten() -> u32 {
    10
}

impl ModelConfig {
    /// Parses and checks a configuration.
    pub fn parse(json: &str) -> Result<ModelConfig, WakeError> {
        let c: ModelConfig =
            serde_json::from_str(json).map_err(|e| WakeError::BadConfig(e.to_string()))?;
        let m = &c.micro;
        if !(m.probability_cutoff > 0.0 && m.probability_cutoff < 1.0) {
            return Err(WakeError::BadConfig(format!(
                "probability_cutoff {} is not in (0, 1)",
                m.probability_cutoff
            )));
        }
        if !(1..=100).contains(&m.sliding_window_size) {
            return Err(WakeError::BadConfig(format!(
                "sliding_window_size {} is not in 1..=100",
                m.sliding_window_size
            )));
        }
        if m.feature_step_size != 10 {
            return Err(WakeError::BadConfig(format!(
                "feature_step_size {} ms (only 10 is supported)",
                m.feature_step_size
            )));
        }
        Ok(c)
    }
}

/// A parsed model with its configuration, ready to make detectors from.
#[derive(Debug, Clone)]
pub struct WakeModel {
    /// Built-in name or file stem.
    pub name: String,
    /// Its configuration.
    pub config: ModelConfig,
    /// The parsed `.tflite`.
    pub def: tflite::ModelDef,
}

impl WakeModel {
    /// A built-in model by name.
    pub fn builtin(name: &str) -> Result<WakeModel, WakeError> {
        let b = BUILTIN
            .iter()
            .find(|b| b.name == name)
            .ok_or_else(|| WakeError::UnknownModel(name.to_string()))?;
        WakeModel::from_bytes(b.name, b.tflite, b.json)
    }

    /// A model from its `.tflite` bytes and its JSON configuration.
    pub fn from_bytes(name: &str, tflite: &[u8], json: &str) -> Result<WakeModel, WakeError> {
        let config = ModelConfig::parse(json)?;
        let def = tflite::ModelDef::parse(tflite)?;
        // Resolve once here so that a bad model fails at load, not at the first detector.
        interp::Interpreter::new(&def)?;
        Ok(WakeModel {
            name: name.to_string(),
            config,
            def,
        })
    }
}
