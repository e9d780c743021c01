//! Satellite mode (`[model] source = "remote"`): the room (audio, echo cancellation, MQTT,
//! systemd, the page, the wake word) runs here; the model is a brain elsewhere, reached over
//! Kyutai's `/api/chat` (any Kyutai server: moshid, or Kyutai's own). Nothing of a model is
//! loaded: the engine relays frames (`engine.rs`) through a link thread (`link.rs`) and plays
//! the replies through a jitter buffer (`jitter.rs`).

mod engine;
mod jitter;
mod link;

pub use engine::RemoteEngine;
pub use link::Report;

use crate::config::{Config, RemoteConfig};
use crate::control::Shared;
use crate::engine::SamplingOverride;
use anyhow::Context;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One frame of the room's conversation on its way to the brain.
pub struct UpFrame {
    /// The conversation it belongs to (the engine's resets count them).
    pub gen: u64,
    /// Its step number.
    pub seq: u64,
    /// 80 ms of audio.
    pub samples: Vec<f32>,
}

/// What the link tells the engine.
pub enum Down {
    /// A session is live; the frame of step `first` was its first.
    Live {
        /// Conversation.
        gen: u64,
        /// First step sent.
        first: u64,
    },
    /// The session failed: no replies are owed any more.
    Lost,
    /// The reply to step `seq`.
    Reply {
        /// Conversation.
        gen: u64,
        /// The step it answers.
        seq: u64,
        /// 80 ms of the brain's audio.
        samples: Vec<f32>,
    },
    /// Text the brain produced.
    Text {
        /// Conversation.
        gen: u64,
        /// The piece.
        text: String,
    },
}

/// What the engine and the link share.
#[derive(Default)]
pub struct LinkState {
    /// Conversations started (each reset starts one; 0 before the room's loop runs).
    pub generation: AtomicU64,
    sampling: Mutex<SamplingOverride>,
}

impl LinkState {
    /// The sampling the next session asks for.
    pub fn sampling(&self) -> SamplingOverride {
        *self.sampling.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set_sampling(&self, s: &SamplingOverride) {
        *self.sampling.lock().unwrap_or_else(|e| e.into_inner()) = *s;
    }
}

/// A satellite's engine for `cfg` (`source = "remote"`): reads the token and the pinned
/// certificate now (so a wrong path fails the load with its name) and starts the link. No
/// network is touched before the room's loop runs; faults are reported through `shared`
/// (state) and `report` (MQTT `error`, once per outage).
pub fn engine(cfg: &Config, shared: Arc<Shared>, report: Report) -> anyhow::Result<RemoteEngine> {
    let (r, token, tls) = prepare(cfg)?;
    let s = &cfg.sampling;
    let base_sampling = vec![
        ("text_temperature", s.temp_text.to_string()),
        ("text_topk", s.top_k.to_string()),
        ("audio_temperature", s.temp_audio.to_string()),
        ("audio_topk", s.top_k.to_string()),
        ("text_seed", s.seed.to_string()),
        ("audio_seed", s.seed.to_string()),
    ];
    shared
        .satellite
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let parts = engine::LinkParts {
        urls: r.urls.clone(),
        token,
        tls,
        timeout: Duration::from_secs(r.connect_timeout_s.max(1)),
        base_sampling,
        shared,
        report,
    };
    RemoteEngine::start(parts, r.max_delay_frames)
}

/// What `check-config` verifies beyond the file: the token file reads, the pinned
/// certificate loads (the code the satellite runs; no network).
pub fn check(cfg: &Config) -> anyhow::Result<()> {
    prepare(cfg).map(|_| ())
}

type Tls = Option<Arc<rustls::ClientConfig>>;

fn prepare(cfg: &Config) -> anyhow::Result<(&RemoteConfig, Option<String>, Tls)> {
    let r = cfg
        .model
        .remote
        .as_ref()
        .context("`source = \"remote\"` needs a [model.remote] table with the brain's urls")?;
    if r.urls.is_empty() {
        anyhow::bail!("`model.remote.urls` is empty: give at least one brain");
    }
    let token = read_token(r)?;
    let tls = if r.urls.iter().any(|u| u.secure) {
        let c = crate::web::client_tls::client_config(r.insecure, r.ca_file.as_deref())
            .context("`model.remote.ca_file`: pin the brain's certificate (its web-cert.pem), or set insecure = true")?;
        Some(Arc::new(c))
    } else {
        None
    };
    Ok((r, token, tls))
}

fn read_token(r: &RemoteConfig) -> anyhow::Result<Option<String>> {
    let Some(p) = &r.token_file else {
        return Ok(None);
    };
    let t = std::fs::read_to_string(p).with_context(|| {
        format!(
            "cannot read `model.remote.token_file` {}: copy the brain's web-token file there",
            p.display()
        )
    })?;
    let t = t.trim();
    if t.is_empty() {
        anyhow::bail!(
            "`model.remote.token_file` {} is empty: copy the brain's web-token file there",
            p.display()
        );
    }
    Ok(Some(t.to_string()))
}

/// What a second conversation on a satellite (a page session while the room holds the link)
/// is told: the satellite relays one conversation, its room's; the brain serves pages itself.
pub fn refusal(cfg: &Config) -> String {
    let brain = cfg
        .model
        .remote
        .as_ref()
        .and_then(|r| r.urls.first())
        .map(|u| u.to_string())
        .unwrap_or_default();
    format!("this is a satellite: it relays its room's conversation only; talk to its brain {brain} instead")
}

/// What the loader hands the supervisor for a satellite: the engine and a description in
/// place of model files (the metadata of the satellite's own page names the brain).
pub fn model_spec(cfg: &Config) -> crate::model_spec::ModelSpec {
    let first = cfg
        .model
        .remote
        .as_ref()
        .and_then(|r| r.urls.first())
        .map(|u| u.to_string())
        .unwrap_or_default();
    crate::model_spec::ModelSpec {
        label: format!("satellite of {first}"),
        lm: first.into(),
        lm_config: moshid_models::lm::LmConfig::v0_1(),
        mimi: "remote".into(),
        mimi_config: moshid_models::mimi::MimiConfig::v0_1(),
        tokenizer: "remote".into(),
    }
}
