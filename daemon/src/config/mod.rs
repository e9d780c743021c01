//! The daemon's configuration: one TOML file, every field validated with a message that
//! names it. The documented example is `systemd/moshid.toml.example`.

pub mod remote;
mod summary;
pub mod types;

pub use crate::web::config::WebConfig;
use moshid_models::lm::Sampling;
pub use remote::{BrainUrl, RemoteConfig};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
pub use types::{DeviceSpec, Dtype, MimiDevice, SampleFormat};

/// Default location of the configuration file (systemd `ConfigurationDirectory=moshid`).
pub const DEFAULT_CONFIG_PATH: &str = "/etc/moshid/config.toml";

/// Errors from reading or validating a configuration file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {error} (pass another file with --config PATH)")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        error: std::io::Error,
    },
    /// The TOML is malformed or has an unknown/mistyped field.
    #[error("config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// toml's message, which names the field and line.
        message: String,
    },
    /// One or more fields have invalid values.
    #[error("config file {path}: {}", .problems.join("; "))]
    Invalid {
        /// The file.
        path: PathBuf,
        /// One message per bad field, each starting with the field's name.
        problems: Vec<String>,
    },
}

/// The whole configuration. Every section has one `Default` (below), which is also what a
/// missing field or section means in the file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Name of this device in MQTT topics; default the hostname (sanitised).
    pub device_id: Option<String>,
    /// Where downloaded and generated models live (systemd `CacheDirectory=moshid`).
    pub cache_dir: PathBuf,
    /// Seconds of silence from the user after which a conversation ends (0 = never).
    pub idle_timeout_s: u64,
    /// Start in conversation as soon as the models are loaded.
    pub autostart: bool,
    /// Model source, device and precision.
    pub model: ModelConfig,
    /// Sampling of text and audio tokens.
    pub sampling: SamplingConfig,
    /// Voice presets by name (merged over the built-in `moshiko` and `moshika`).
    pub voices: BTreeMap<String, VoicePreset>,
    /// PersonaPlex personas by name: a voice prompt and a role (`model.persona` picks one).
    pub personas: BTreeMap<String, PersonaConfig>,
    /// Audio devices.
    pub audio: AudioConfig,
    /// Echo cancellation.
    pub aec: AecConfig,
    /// MQTT control and Home Assistant discovery.
    pub mqtt: MqttConfig,
    /// The web endpoint: the page, Kyutai's `/api/chat`, `/api/state`.
    pub web: WebConfig,
    /// The wake word that starts the room's conversation.
    pub wake: WakeConfig,
}

/// Where the model weights come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelSource {
    /// Download the voice preset's Hugging Face repo into the cache (or use the cache).
    #[default]
    Hub,
    /// Files on disk named in `[model.local]`.
    Local,
    /// The built-in small random-weight model (no download; for demos and tests).
    Demo,
    /// A brain elsewhere, over Kyutai's `/api/chat` (`[model.remote]`): a satellite loads
    /// no model.
    Remote,
}

/// `[model]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelConfig {
    /// `hub`, `local`, `demo` or `remote`.
    pub source: ModelSource,
    /// The voice preset used at start (a key of `[voices]`).
    pub voice: String,
    /// `auto` (default: CUDA when built with it and a GPU answers, else the CPU), `cpu`,
    /// `cuda` or `cuda:N`.
    #[serde(deserialize_with = "types::from_str")]
    pub device: DeviceSpec,
    /// `auto`, `f32`, `f16` or `bf16` (for safetensors LMs; GGUF keeps its quantization).
    #[serde(deserialize_with = "types::from_str")]
    pub dtype: Dtype,
    /// How Mimi stores its weights on the CPU: `auto` or `f32` (the reference's numbers),
    /// `f16` (half the memory and memory traffic; arithmetic stays f32).
    #[serde(deserialize_with = "types::from_str")]
    pub mimi_dtype: Dtype,
    /// Where Mimi runs: `same` (the LM's device) or `cpu`.
    #[serde(deserialize_with = "types::from_str")]
    pub mimi_device: MimiDevice,
    /// Decode frame t while the LM computes frame t+1 (on two threads, and on two devices
    /// with `mimi_device = "cpu"` and the LM on a GPU): a step costs about the longer of the
    /// two instead of their sum, and the reply comes one frame (80 ms) later.
    pub mimi_overlap: bool,
    /// LM context in steps (80 ms each); older steps are forgotten.
    pub context: usize,
    /// Never touch the network: use only what is in the cache.
    pub offline: bool,
    /// Files for `source = "local"`.
    pub local: Option<LocalFiles>,
    /// The brain for `source = "remote"`.
    pub remote: Option<RemoteConfig>,
    /// The persona (a key of `[personas]`) every conversation starts with; needs a
    /// PersonaPlex model. None: no prompt.
    pub persona: Option<String>,
}

/// `[model.local]`: the three files on disk.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalFiles {
    /// LM weights (`.safetensors` or `.gguf`).
    pub lm: PathBuf,
    /// Mimi weights (`.safetensors`).
    pub mimi: PathBuf,
    /// SentencePiece text tokenizer (`.model`).
    pub tokenizer: PathBuf,
    /// LM configuration JSON (reference `lm_kwargs` keys); default: the 7B Moshi config.
    #[serde(default)]
    pub lm_config: Option<PathBuf>,
    /// Mimi configuration JSON; default: the released Mimi.
    #[serde(default)]
    pub mimi_config: Option<PathBuf>,
}

/// `[personas.NAME]`: what a PersonaPlex conversation is prompted with before it starts.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PersonaConfig {
    /// The `[voices]` model this persona is for (checked against `model.voice`); None: any
    /// PersonaPlex model.
    #[serde(default)]
    pub voice: Option<String>,
    /// NVIDIA's preset name (`voices/NAME.pt` beside the LM), or a `.pt` / `.wav` path.
    #[serde(default)]
    pub voice_prompt: Option<String>,
    /// The role, e.g. "You are the front desk of the Hotel Lumen." (wrapped in `<system>`).
    #[serde(default)]
    pub role: String,
}

/// A named voice: a Hugging Face repo and the files in it (`repo` is required, the rest
/// default to the layout of Kyutai's candle releases).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VoicePreset {
    /// `org/name` on Hugging Face.
    pub repo: String,
    /// Branch, tag or commit.
    #[serde(default = "VoicePreset::default_revision")]
    pub revision: String,
    /// LM file in the repo.
    #[serde(default = "VoicePreset::default_lm_file")]
    pub lm_file: String,
    /// Mimi file in the repo.
    #[serde(default = "VoicePreset::default_mimi_file")]
    pub mimi_file: String,
    /// Tokenizer file in the repo.
    #[serde(default = "VoicePreset::default_tokenizer_file")]
    pub tokenizer_file: String,
}

/// `[sampling]`; the defaults are the models' own (`moshid_models::lm::Sampling`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SamplingConfig {
    /// Text temperature (0 < t <= 5).
    pub temp_text: f64,
    /// Audio temperature (0 < t <= 5).
    pub temp_audio: f64,
    /// Top-k (1..=2048).
    pub top_k: usize,
    /// Argmax instead of sampling (deterministic; for tests).
    pub greedy: bool,
    /// Random seed.
    pub seed: u64,
}

/// `[audio]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AudioConfig {
    /// Microphone: an ALSA PCM name (e.g. `default`, `plughw:1,0`) or `wav:/path.wav`.
    pub capture: String,
    /// Speaker: an ALSA PCM name or `wav:/path.wav`.
    pub playback: String,
    /// Sample rate opened on the devices (resampled to/from 24 kHz).
    pub rate: u32,
    /// Sample format on the devices: `S16`, `S32` or `F32`.
    #[serde(deserialize_with = "types::from_str")]
    pub format: SampleFormat,
    /// Channels opened on the microphone.
    pub capture_channels: u16,
    /// Microphone channels averaged into the voice signal (0-based); empty = all.
    pub mic_channels: Vec<u16>,
    /// Linear gain on the microphone signal.
    pub mic_gain: f32,
    /// Channels opened on the speaker (each gets Moshi's voice).
    pub playback_channels: u16,
    /// Pace file-backed devices (ALSA `file`/`null` PCMs, WAV files) to real time.
    pub pace: bool,
    /// Initial volume, 0-100.
    pub volume: u8,
    /// Frames (80 ms) queued between the threads before the oldest are skipped.
    pub queue_frames: usize,
}

/// `[aec]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AecConfig {
    /// Cancel the speaker's echo from the microphone signal.
    pub enabled: bool,
}

/// `[wake]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WakeConfig {
    /// Listen for the wake word while the room is idle; a detection starts the conversation.
    pub enabled: bool,
    /// A built-in model (`okay_nabu`, `hey_jarvis`, `alexa`, `hey_mycroft`) or a `.tflite`
    /// file (its `.json` beside it, or `json`).
    pub model: String,
    /// The model's JSON configuration, for a `.tflite` file elsewhere.
    pub json: Option<PathBuf>,
    /// Detection cutoff in (0, 1) instead of the model's `probability_cutoff` (lower fires
    /// more easily).
    pub sensitivity: Option<f64>,
    /// Chimes on the room's speaker when the wake word is heard, when a conversation ends
    /// and on error (only with `enabled`).
    pub sounds: bool,
}

/// `[mqtt]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MqttConfig {
    /// Connect to a broker at all.
    pub enabled: bool,
    /// Broker host name or address.
    pub host: String,
    /// Broker port (1883, or 8883 with TLS).
    pub port: u16,
    /// Username (optional).
    pub username: Option<String>,
    /// Password (optional; prefer `password_file`).
    pub password: Option<String>,
    /// File holding the password (first line), e.g. a systemd credential.
    pub password_file: Option<PathBuf>,
    /// Topic prefix; topics are `<base_topic>/<device_id>/...`.
    pub base_topic: String,
    /// Publish Home Assistant discovery.
    pub discovery: bool,
    /// Home Assistant discovery prefix.
    pub discovery_prefix: String,
    /// Keep-alive in seconds (5..=3600).
    pub keepalive_s: u64,
    /// TLS; plain TCP when absent.
    pub tls: Option<TlsConfig>,
}

/// `[mqtt.tls]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file with the CA certificate(s) that signed the broker's certificate.
    pub ca_file: PathBuf,
    /// PEM client certificate (needs `client_key`).
    #[serde(default)]
    pub client_cert: Option<PathBuf>,
    /// PEM client private key (needs `client_cert`).
    #[serde(default)]
    pub client_key: Option<PathBuf>,
}

// The defaults, written once each. `systemd/moshid.toml.example` shows the same values (a
// test holds them equal).

impl Default for Config {
    fn default() -> Self {
        Self {
            device_id: None,
            // systemd sets CACHE_DIRECTORY for CacheDirectory=; else the FHS location.
            cache_dir: std::env::var_os("CACHE_DIRECTORY")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("/var/cache/moshid")),
            idle_timeout_s: 300,
            autostart: true,
            model: ModelConfig::default(),
            sampling: SamplingConfig::default(),
            voices: builtin_voices(),
            personas: BTreeMap::new(),
            audio: AudioConfig::default(),
            aec: AecConfig::default(),
            mqtt: MqttConfig::default(),
            web: WebConfig::default(),
            wake: WakeConfig::default(),
        }
    }
}
impl Default for WakeConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            model: "okay_nabu".into(),
            json: None,
            sensitivity: None,
            sounds: true,
        }
    }
}
impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            source: ModelSource::default(),
            voice: "moshiko".into(),
            device: DeviceSpec::default(),
            dtype: Dtype::default(),
            mimi_dtype: Dtype::default(),
            mimi_device: MimiDevice::default(),
            mimi_overlap: false,
            context: 3000,
            offline: false,
            local: None,
            remote: None,
            persona: None,
        }
    }
}
impl Default for SamplingConfig {
    fn default() -> Self {
        let s = Sampling::default();
        Self {
            temp_text: s.temp_text,
            temp_audio: s.temp_audio,
            top_k: s.top_k,
            greedy: s.greedy,
            seed: s.seed,
        }
    }
}
impl SamplingConfig {
    /// The models' sampling settings.
    pub fn sampling(&self) -> Sampling {
        Sampling {
            temp_text: self.temp_text,
            temp_audio: self.temp_audio,
            top_k: self.top_k,
            greedy: self.greedy,
            seed: self.seed,
        }
    }
}
impl Default for AudioConfig {
    fn default() -> Self {
        Self {
            capture: "default".into(),
            playback: "default".into(),
            rate: 24_000,
            format: SampleFormat::S16,
            capture_channels: 1,
            mic_channels: Vec::new(),
            mic_gain: 1.0,
            playback_channels: 1,
            pace: false,
            volume: 80,
            queue_frames: 3,
        }
    }
}
impl Default for AecConfig {
    fn default() -> Self {
        Self { enabled: true }
    }
}
impl Default for MqttConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            host: "localhost".into(),
            port: 1883,
            username: None,
            password: None,
            password_file: None,
            base_topic: "moshid".into(),
            discovery: true,
            discovery_prefix: "homeassistant".into(),
            keepalive_s: 30,
            tls: None,
        }
    }
}

impl VoicePreset {
    fn hub(repo: &str) -> Self {
        Self {
            repo: repo.into(),
            revision: Self::default_revision(),
            lm_file: Self::default_lm_file(),
            mimi_file: Self::default_mimi_file(),
            tokenizer_file: Self::default_tokenizer_file(),
        }
    }
    fn default_revision() -> String {
        "main".into()
    }
    fn default_lm_file() -> String {
        "model.q8.gguf".into()
    }
    fn default_mimi_file() -> String {
        "tokenizer-e351c8d8-checkpoint125.safetensors".into()
    }
    fn default_tokenizer_file() -> String {
        "tokenizer_spm_32k_3.model".into()
    }
}

/// The built-in voice presets: Kyutai's q8 candle releases.
pub fn builtin_voices() -> BTreeMap<String, VoicePreset> {
    BTreeMap::from([
        (
            "moshiko".into(),
            VoicePreset::hub("kyutai/moshiko-candle-q8"),
        ),
        (
            "moshika".into(),
            VoicePreset::hub("kyutai/moshika-candle-q8"),
        ),
    ])
}

/// True for a non-empty id made of `[a-zA-Z0-9_-]` (MQTT topic level and HA object id).
pub fn is_valid_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Turns a host name into a valid device id (other characters become `_`).
pub fn sanitize_id(s: &str) -> String {
    let out: String = s
        .chars()
        .take(64)
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out.is_empty() {
        "moshid".into()
    } else {
        out
    }
}

impl Config {
    /// Reads, parses and validates a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            path: path.to_path_buf(),
            error,
        })?;
        Self::from_toml(&text, path)
    }

    /// Parses and validates TOML text; `path` only labels messages.
    pub fn from_toml(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let mut cfg: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string().trim().replace('\n', " "),
        })?;
        // User presets override built-ins of the same name.
        let mut voices = builtin_voices();
        voices.append(&mut cfg.voices);
        cfg.voices = voices;
        let problems = cfg.problems();
        if problems.is_empty() {
            Ok(cfg)
        } else {
            Err(ConfigError::Invalid {
                path: path.to_path_buf(),
                problems,
            })
        }
    }

    /// A configuration with every default and the demo model (for `moshid demo`).
    pub fn demo_default() -> Config {
        let mut cfg = Config::default();
        cfg.model.source = ModelSource::Demo;
        cfg
    }

    /// Conversations the model serves at once: the room's, and with `[web]` up to
    /// `max_conversations` web sessions beside it.
    pub fn conversations(&self) -> usize {
        1 + if self.web.enabled {
            self.web.max_conversations
        } else {
            0
        }
    }

    /// The device id: configured, or the sanitised hostname.
    pub fn device_id(&self) -> String {
        match &self.device_id {
            Some(id) => id.clone(),
            None => hostname::get()
                .ok()
                .and_then(|h| h.into_string().ok())
                .map(|h| sanitize_id(&h))
                .unwrap_or_else(|| "moshid".into()),
        }
    }

    /// Every invalid field, each message starting with the field's name. One function per
    /// section: a new check goes into its section's function.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if let Some(id) = &self.device_id {
            if !is_valid_id(id) {
                p.push(format!(
                    "`device_id` = {id:?}: use 1-64 characters from [a-zA-Z0-9_-]"
                ));
            }
        }
        if self.cache_dir.as_os_str().is_empty() {
            p.push("`cache_dir`: must not be empty".into());
        }
        self.model_problems(&mut p);
        voice_problems(&self.voices, &mut p);
        self.persona_problems(&mut p);
        sampling_problems(&self.sampling, &mut p);
        audio_problems(&self.audio, &mut p);
        mqtt_problems(&self.mqtt, &mut p);
        p.extend(self.web.problems());
        wake_problems(&self.wake, &mut p);
        p
    }

    fn persona_problems(&self, p: &mut Vec<String>) {
        for (name, persona) in &self.personas {
            if !is_valid_id(name) {
                p.push(format!(
                    "`personas.{name}`: persona names use [a-zA-Z0-9_-] (they are MQTT payloads)"
                ));
            }
            if persona.voice_prompt.is_none() && persona.role.trim().is_empty() {
                p.push(format!(
                    "`personas.{name}`: give a voice_prompt, a role, or both"
                ));
            }
            if let Some(v) = persona
                .voice
                .as_ref()
                .filter(|v| !self.voices.contains_key(*v))
            {
                p.push(format!(
                    "`personas.{name}.voice` = {v:?}: no such [voices] entry"
                ));
            }
        }
        let Some(name) = &self.model.persona else {
            return;
        };
        match self.personas.get(name) {
            None => p.push(format!(
                "`model.persona` = {name:?}: no such [personas] entry; known: {}",
                self.personas.keys().cloned().collect::<Vec<_>>().join(", ")
            )),
            Some(persona) => {
                if let Some(v) = persona.voice.as_ref().filter(|v| **v != self.model.voice) {
                    p.push(format!(
                        "`model.persona` = {name:?} is for voice {v:?} but `model.voice` is {:?}: set model.voice = {v:?}",
                        self.model.voice
                    ));
                }
            }
        }
    }

    fn model_problems(&self, p: &mut Vec<String>) {
        let m = &self.model;
        if !self.voices.contains_key(&m.voice) {
            p.push(format!(
                "`model.voice` = {:?}: no such preset; known: {}",
                m.voice,
                self.voices.keys().cloned().collect::<Vec<_>>().join(", ")
            ));
        }
        if let Err(e) = m.mimi_dtype.mimi_weights() {
            p.push(format!("`model.mimi_dtype`: {e}"));
        }
        if !(16..=100_000).contains(&m.context) {
            p.push(format!(
                "`model.context` = {}: use 16..=100000 steps (3000 = 4 minutes)",
                m.context
            ));
        }
        match (m.source, &m.local) {
            (ModelSource::Local, None) => p.push(
                "`model.local`: `source = \"local\"` needs a [model.local] table with lm, mimi and tokenizer paths".into(),
            ),
            (ModelSource::Local, Some(l)) => {
                for (name, path) in [("lm", &l.lm), ("mimi", &l.mimi), ("tokenizer", &l.tokenizer)] {
                    if path.as_os_str().is_empty() {
                        p.push(format!("`model.local.{name}`: must not be empty"));
                    }
                }
            }
            _ => {}
        }
        match (m.source, &m.remote) {
            (ModelSource::Remote, None) => p.push(
                "`model.remote`: `source = \"remote\"` needs a [model.remote] table with the brain's urls".into(),
            ),
            (ModelSource::Remote, Some(r)) => r.problems(p),
            _ => {}
        }
    }
}

fn voice_problems(voices: &BTreeMap<String, VoicePreset>, p: &mut Vec<String>) {
    for (name, v) in voices {
        if !is_valid_id(name) {
            p.push(format!(
                "`voices.{name}`: preset names use [a-zA-Z0-9_-] (they are MQTT payloads)"
            ));
        }
        let parts: Vec<&str> = v.repo.split('/').collect();
        if parts.len() != 2 || parts.iter().any(|s| s.is_empty()) {
            p.push(format!(
                "`voices.{name}.repo` = {:?}: use `org/name`, e.g. kyutai/moshiko-candle-q8",
                v.repo
            ));
        }
        for (field, f) in [
            ("lm_file", &v.lm_file),
            ("mimi_file", &v.mimi_file),
            ("tokenizer_file", &v.tokenizer_file),
            ("revision", &v.revision),
        ] {
            if f.is_empty() || f.contains("..") {
                p.push(format!(
                    "`voices.{name}.{field}` = {f:?}: must be a file name in the repo"
                ));
            }
        }
    }
}

/// The ranges of `moshid_models::lm::Sampling::validate` (which the CLI gets), per key.
fn wake_problems(w: &WakeConfig, p: &mut Vec<String>) {
    let is_file = w.model.ends_with(".tflite") || w.model.contains('/');
    let builtin = moshid_models::wake::BUILTIN
        .iter()
        .any(|b| b.name == w.model);
    if !is_file && !builtin {
        p.push(format!(
            "`wake.model` = {:?}: not a built-in model (okay_nabu, hey_jarvis, alexa, hey_mycroft) nor a .tflite file",
            w.model
        ));
    }
    if w.json.is_some() && !is_file {
        p.push("`wake.json`: goes with a .tflite `wake.model`, not a built-in one".into());
    }
    if let Some(v) = w.sensitivity {
        if !(v > 0.0 && v < 1.0) {
            p.push(format!("`wake.sensitivity` = {v}: use a cutoff in (0, 1)"));
        }
    }
}

fn sampling_problems(s: &SamplingConfig, p: &mut Vec<String>) {
    use moshid_models::lm::{MAX_TEMPERATURE, MAX_TOP_K};
    for (name, t) in [("temp_text", s.temp_text), ("temp_audio", s.temp_audio)] {
        if !(t > 0.0 && t <= MAX_TEMPERATURE) {
            p.push(format!(
                "`sampling.{name}` = {t}: use a value in (0, {MAX_TEMPERATURE}]"
            ));
        }
    }
    if !(1..=MAX_TOP_K).contains(&s.top_k) {
        p.push(format!(
            "`sampling.top_k` = {}: use 1..={MAX_TOP_K}",
            s.top_k
        ));
    }
}

fn audio_problems(a: &AudioConfig, p: &mut Vec<String>) {
    if a.capture.trim().is_empty() {
        p.push("`audio.capture`: name an ALSA PCM, e.g. `default`".into());
    }
    if a.playback.trim().is_empty() {
        p.push("`audio.playback`: name an ALSA PCM, e.g. `default`".into());
    }
    if !(8_000..=192_000).contains(&a.rate) {
        p.push(format!("`audio.rate` = {}: use 8000..=192000 Hz", a.rate));
    }
    for (name, n) in [
        ("capture_channels", a.capture_channels),
        ("playback_channels", a.playback_channels),
    ] {
        if !(1..=32).contains(&n) {
            p.push(format!("`audio.{name}` = {n}: use 1..=32"));
        }
    }
    if let Some(c) = a.mic_channels.iter().find(|&&c| c >= a.capture_channels) {
        p.push(format!(
            "`audio.mic_channels` = {:?}: channel {c} does not exist with capture_channels = {}",
            a.mic_channels, a.capture_channels
        ));
    }
    if !(a.mic_gain.is_finite() && (0.0..=100.0).contains(&a.mic_gain)) {
        p.push(format!("`audio.mic_gain` = {}: use 0..=100", a.mic_gain));
    }
    if a.volume > 100 {
        p.push(format!("`audio.volume` = {}: use 0..=100", a.volume));
    }
    if !(1..=50).contains(&a.queue_frames) {
        p.push(format!(
            "`audio.queue_frames` = {}: use 1..=50",
            a.queue_frames
        ));
    }
}

fn mqtt_problems(q: &MqttConfig, p: &mut Vec<String>) {
    if q.enabled {
        if q.host.trim().is_empty() {
            p.push("`mqtt.host`: must not be empty when mqtt.enabled = true".into());
        }
        if q.port == 0 {
            p.push("`mqtt.port` = 0: use 1..=65535".into());
        }
    }
    if q.password.is_some() && q.password_file.is_some() {
        p.push("`mqtt.password_file`: set either password or password_file, not both".into());
    }
    if (q.password.is_some() || q.password_file.is_some()) && q.username.is_none() {
        p.push("`mqtt.username`: a password needs a username".into());
    }
    if q.base_topic.is_empty()
        || q.base_topic.contains(['+', '#'])
        || q.base_topic.starts_with('/')
        || q.base_topic.ends_with('/')
    {
        p.push(format!(
            "`mqtt.base_topic` = {:?}: use a topic without wildcards or leading/trailing `/`",
            q.base_topic
        ));
    }
    if q.discovery_prefix.is_empty() || q.discovery_prefix.contains(['+', '#']) {
        p.push(format!(
            "`mqtt.discovery_prefix` = {:?}: use a topic without wildcards",
            q.discovery_prefix
        ));
    }
    if !(5..=3600).contains(&q.keepalive_s) {
        p.push(format!(
            "`mqtt.keepalive_s` = {}: use 5..=3600",
            q.keepalive_s
        ));
    }
    if let Some(t) = &q.tls {
        if t.client_cert.is_some() != t.client_key.is_some() {
            p.push("`mqtt.tls.client_key`: client_cert and client_key go together".into());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Config, ConfigError> {
        Config::from_toml(s, Path::new("test.toml"))
    }

    #[test]
    fn personas_parse_and_are_checked() {
        let ok = "[model]\npersona = \"desk\"\n[personas.desk]\nvoice_prompt = \"NATF2\"\nrole = \"You are the front desk.\"\n";
        let c = parse(ok).unwrap();
        assert_eq!(c.personas["desk"].voice_prompt.as_deref(), Some("NATF2"));
        assert_eq!(c.model.persona.as_deref(), Some("desk"));
        for (toml, says) in [
            ("[model]\npersona = \"nobody\"\n", "`model.persona`"),
            ("[personas.\"a b\"]\nrole = \"x\"\n", "persona names"),
            ("[personas.p]\nrole = \" \"\n", "voice_prompt, a role"),
            (
                "[personas.p]\nrole = \"x\"\nvoice = \"nope\"\n",
                "`personas.p.voice`",
            ),
            (
                "[model]\npersona = \"p\"\n[personas.p]\nrole = \"x\"\nvoice = \"moshika\"\n",
                "set model.voice",
            ),
        ] {
            let err = parse(toml).unwrap_err().to_string();
            assert!(err.contains(says), "{toml}: {err}");
        }
    }

    #[test]
    fn empty_file_gives_defaults() {
        let c = parse("").expect("defaults are valid");
        assert_eq!(c.model.source, ModelSource::Hub);
        assert_eq!(c.voices["moshika"].repo, "kyutai/moshika-candle-q8");
        assert_eq!(c.mqtt.port, 1883);
        assert!(!c.mqtt.enabled);
    }

    #[test]
    fn unknown_field_is_named() {
        let e = parse("[mqtt]\nhots = \"x\"\n").unwrap_err().to_string();
        assert!(e.contains("hots"), "{e}");
    }

    #[test]
    fn bad_values_are_named() {
        let e = parse(
            "device_id = \"a b\"\n[sampling]\ntop_k = 0\n[audio]\nvolume = 101\nmic_channels = [3]\n[model]\nvoice = \"nobody\"\n",
        )
        .unwrap_err()
        .to_string();
        for f in [
            "`device_id`",
            "`sampling.top_k`",
            "`audio.volume`",
            "`audio.mic_channels`",
            "`model.voice`",
        ] {
            assert!(e.contains(f), "{f} missing in {e}");
        }
    }

    #[test]
    fn web_problems_are_named() {
        let e = parse("[web]\ntls = \"off\"\nidle_timeout_s = 0\n")
            .unwrap_err()
            .to_string();
        for f in ["`web.tls`", "`web.idle_timeout_s`"] {
            assert!(e.contains(f), "{f} missing in {e}");
        }
        let c = parse("[web]\nenabled = false\ntls = \"off\"\n").unwrap();
        assert!(!c.web.enabled, "a disabled endpoint is not checked");
        assert!(parse("[web]\nlisten = \"nowhere\"\n").is_err());
    }

    #[test]
    fn user_voice_presets_merge() {
        let c =
            parse("[voices.mine]\nrepo = \"me/my-moshi\"\n[model]\nvoice = \"mine\"\n").unwrap();
        assert_eq!(c.voices.len(), 3);
        assert_eq!(c.voices["mine"].lm_file, "model.q8.gguf");
    }

    #[test]
    fn documented_example_is_valid() {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../systemd/moshid.toml.example");
        let c = Config::load(&p).expect("the example config validates");
        assert_eq!(c, parse("").unwrap(), "the example shows the defaults");
    }

    #[test]
    fn typed_fields_parse_once_and_name_the_line() {
        let c = parse("[model]\ndevice = \"cuda:1\"\ndtype = \"f16\"\n[audio]\nformat = \"f32\"\n")
            .unwrap();
        assert_eq!(c.model.device, DeviceSpec::Cuda(1));
        assert_eq!(c.model.mimi_device, MimiDevice::Same);
        let m = parse("[model]\nmimi_device = \"cpu\"\nmimi_overlap = true\n").unwrap();
        assert_eq!(
            (m.model.mimi_device, m.model.mimi_overlap),
            (MimiDevice::Cpu, true)
        );
        let e = parse("[model]\nmimi_device = \"gpu\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown mimi_device `gpu`"), "{e}");
        assert_eq!(c.model.dtype, Dtype::F16);
        assert_eq!(c.audio.format, SampleFormat::F32);
        let m = parse("[model]\nmimi_dtype = \"f16\"\n").unwrap();
        assert_eq!(m.model.mimi_dtype, Dtype::F16);
        assert_eq!(parse("").unwrap().model.mimi_dtype, Dtype::Auto);
        let e = parse("[model]\nmimi_dtype = \"bf16\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("mimi_dtype") && e.contains("f16"), "{e}");
        let e = parse("[model]\ndevice = \"tpu\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("unknown device `tpu`") && e.contains("line 2"),
            "{e}"
        );
        let e = parse("[audio]\nformat = \"u8\"\n").unwrap_err().to_string();
        assert!(e.contains("S16, S32 or F32") && e.contains("format"), "{e}");
    }

    #[test]
    fn ids() {
        assert!(is_valid_id("kitchen-1_a"));
        assert!(!is_valid_id("a/b"));
        assert_eq!(sanitize_id("my.host name"), "my_host_name");
    }
}
