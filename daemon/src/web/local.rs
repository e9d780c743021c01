//! A [`Backend`] that owns a model outright: what `moshid demo --web` serves (no room, no
//! MQTT), and what the server's tests run against. Each web session holds a conversation
//! slot of one [`Hub`]: several sessions share the model's steps.

use super::backend::{Backend, Control, DemoState, DeviceState, ModelInfo, Talk};
use super::params::SessionSampling;
use crate::engine::{Engine, JoinRequest, PersonaRequest, SamplingOverride};
use crate::hub::{Hub, HubConversation};
use crate::moshi_engine::PersonaCache;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

/// The state the page shows.
#[derive(Default)]
struct Inner {
    /// The clients in a conversation, in the order they came.
    clients: Mutex<Vec<SocketAddr>>,
    muted: AtomicBool,
    volume: AtomicU8,
    dropped_input: AtomicU64,
    dropped_output: AtomicU64,
}

/// A model served to up to its hub's capacity of web sessions at once.
pub struct LocalBackend {
    hub: Hub,
    inner: Arc<Inner>,
    info: ModelInfo,
    voice: String,
    /// The personas sessions may ask for (None: the model takes none).
    personas: Option<PersonaCache>,
}

impl LocalBackend {
    /// Serves `hub`'s model; `info` goes into the metadata.
    pub fn new(hub: Hub, info: ModelInfo, voice: &str, volume: u8) -> LocalBackend {
        let inner = Inner {
            volume: AtomicU8::new(volume.min(100)),
            ..Inner::default()
        };
        LocalBackend {
            hub,
            inner: Arc::new(inner),
            info,
            voice: voice.to_string(),
            personas: None,
        }
    }

    /// Serves sessions that ask for a persona (`[personas]`, or their own prompt) from
    /// `cache`, which must belong to the hub's model.
    pub fn with_personas(mut self, cache: PersonaCache) -> LocalBackend {
        self.personas = Some(cache);
        self
    }
}

/// What a session's sampling parameters mean for the engine. moshid draws text and audio
/// tokens from one seeded RNG (as the reference `LMGen`), so one seed applies:
/// `text_seed`, else `audio_seed`.
pub fn sampling_override(s: &SessionSampling) -> SamplingOverride {
    SamplingOverride {
        temp_text: s.text_temperature,
        temp_audio: s.audio_temperature,
        top_k_text: s.text_topk,
        top_k_audio: s.audio_topk,
        seed: s.text_seed.or(s.audio_seed),
    }
}

impl Backend for LocalBackend {
    fn model_info(&self) -> ModelInfo {
        self.info.clone()
    }

    fn max_conversations(&self) -> usize {
        self.hub.capacity()
    }

    fn open(&self, peer: SocketAddr, s: SessionSampling) -> Result<Box<dyn Talk>, String> {
        self.open_as(peer, s, None)
    }

    fn open_as(
        &self,
        peer: SocketAddr,
        s: SessionSampling,
        persona: Option<&PersonaRequest>,
    ) -> Result<Box<dyn Talk>, String> {
        let persona = match (persona, &self.personas) {
            (None, _) => None,
            (Some(p), Some(cache)) => Some(cache.get(p).map_err(|e| e.to_string())?),
            (Some(p), None) => return Err(format!("persona {p}: this model takes no persona")),
        };
        let named = persona.as_ref().map(|p| format!("; persona {}", p.name));
        let request = JoinRequest {
            sampling: sampling_override(&s),
            persona,
        };
        let conv = self.hub.join(request).map_err(|e| match named {
            Some(_) => e.0,
            None => format!("busy: {}", e.0),
        })?;
        log::info!(
            "web: {peer}: conversation slot {} of {} ({}{})",
            conv.slot(),
            self.hub.capacity(),
            self.hub.describe(),
            named.as_deref().unwrap_or("")
        );
        if let Ok(mut c) = self.inner.clients.lock() {
            c.push(peer);
        }
        Ok(Box::new(LocalTalk {
            conv,
            inner: self.inner.clone(),
            peer,
        }))
    }

    fn personas(&self) -> Vec<String> {
        self.personas
            .as_ref()
            .map(|c| c.names())
            .unwrap_or_default()
    }

    fn state(&self) -> DeviceState {
        let i = &self.inner;
        let clients = i.clients.lock().map(|c| c.clone()).unwrap_or_default();
        let client = clients.first().copied();
        // The model's batched step (all conversations of the round), not a session's wait.
        let stats = self.hub.stats();
        let step_ms = stats.last_step_us.load(Ordering::Relaxed) as f64 / 1000.0;
        DeviceState::Demo(DemoState {
            conversations: self.hub.stats().active.load(Ordering::Relaxed),
            clients: clients.iter().map(|c| c.to_string()).collect(),
            phase: if client.is_some() {
                "conversation"
            } else {
                "idle"
            },
            endpoint: client.map(|_| "web"),
            client: client.map(|c| c.to_string()),
            voice: self.voice.clone(),
            muted: i.muted.load(Ordering::Relaxed),
            volume: i.volume.load(Ordering::Relaxed),
            step_ms: (step_ms * 10.0).round() / 10.0,
            rtf: (step_ms / 80.0 * 1000.0).round() / 1000.0,
            steps: stats.steps.load(Ordering::Relaxed),
            frames: stats.frames.load(Ordering::Relaxed),
            web_dropped_input: i.dropped_input.load(Ordering::Relaxed),
            web_dropped_output: i.dropped_output.load(Ordering::Relaxed),
        })
    }

    fn control(&self, c: Control) -> Result<(), String> {
        match c {
            Control::Mute(m) => self.inner.muted.store(m, Ordering::Relaxed),
            Control::Volume(v) => self.inner.volume.store(v.min(100), Ordering::Relaxed),
            Control::Voice(v) if v == self.voice => {}
            Control::Voice(v) => {
                return Err(format!(
                    "the offline demo serves one voice ({}); {v:?} needs `moshid run`",
                    self.voice
                ))
            }
        }
        Ok(())
    }

    fn count_dropped(&self, input: u64, output: u64) {
        self.inner.dropped_input.fetch_add(input, Ordering::Relaxed);
        self.inner
            .dropped_output
            .fetch_add(output, Ordering::Relaxed);
    }
}

struct LocalTalk {
    conv: HubConversation,
    inner: Arc<Inner>,
    peer: SocketAddr,
}

impl Talk for LocalTalk {
    fn step(&mut self, input: &[f32], output: &mut [f32], text: &mut String) -> Result<(), String> {
        let silence;
        let heard = if self.inner.muted.load(Ordering::Relaxed) {
            silence = vec![0.0; input.len()];
            &silence[..]
        } else {
            input
        };
        self.conv
            .step(heard, output, text)
            .map_err(|e| e.to_string())?;
        let gain = self.inner.volume.load(Ordering::Relaxed) as f32 / 100.0;
        for s in output.iter_mut() {
            *s = (*s * gain).clamp(-1.0, 1.0);
        }
        Ok(())
    }

    fn ended(&self) -> Option<String> {
        None // nothing but the client ends a demo session
    }
}

impl Drop for LocalTalk {
    fn drop(&mut self) {
        if let Ok(mut c) = self.inner.clients.lock() {
            c.retain(|p| *p != self.peer);
        }
    }
}
