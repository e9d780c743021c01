//! The appliance's [`Backend`]: each web session is a conversation of its own on the
//! model the supervisor runs (a slot of its hub, beside the room's), joined through the
//! [`HubDoor`] the supervisor keeps up to date. The room and the sessions do not wait for
//! each other: the room's devices failing (or its conversation being off) never refuses a
//! session. Mute, volume and voice on the page are the device's (the supervisor's
//! commands); the session's own sampling stays its own.

use super::backend::{Backend, Control, DeviceState, ModelInfo, Talk};
use super::local::sampling_override;
use super::params::SessionSampling;
use crate::control::{Command, Phase, Shared};
use crate::engine::{Engine, JoinRequest, PersonaRequest};
use crate::hub::{HubConversation, HubDoor, HubHandle, Served};
use crate::service::Event;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc, Mutex};

/// The web endpoint's view of the supervisor and its model.
pub struct SupervisorBackend {
    tx: Mutex<mpsc::Sender<Event>>,
    shared: Arc<Shared>,
    info: Arc<Mutex<ModelInfo>>,
    voices: Vec<String>,
    door: HubDoor,
    max_conversations: usize,
}

impl SupervisorBackend {
    /// A backend sending commands to the supervisor's channel and joining conversations
    /// through `door`; `info` is kept up to date by the supervisor (the loaded model's
    /// files). At most `max_conversations` web sessions at once.
    pub fn new(
        tx: mpsc::Sender<Event>,
        shared: Arc<Shared>,
        info: Arc<Mutex<ModelInfo>>,
        voices: Vec<String>,
        door: HubDoor,
        max_conversations: usize,
    ) -> SupervisorBackend {
        SupervisorBackend {
            tx: Mutex::new(tx),
            shared,
            info,
            voices,
            door,
            max_conversations,
        }
    }

    fn send(&self, ev: Event) -> Result<(), String> {
        let tx = self.tx.lock().map_err(|_| "the supervisor is gone")?;
        tx.send(ev)
            .map_err(|_| "the supervisor is gone".to_string())
    }

    /// Why no session can start now: no model runs (loading, or it failed to load).
    fn no_model(&self) -> String {
        let s = self.shared.snapshot();
        match s.phase {
            Phase::Stopped => "the device is stopping".into(),
            Phase::Error if s.error.is_some() => {
                format!("the model is not running: {}", s.error.unwrap_or_default())
            }
            _ => "the model is loading: try again in a moment".into(),
        }
    }
}

impl Backend for SupervisorBackend {
    fn model_info(&self) -> ModelInfo {
        self.info.lock().map(|i| i.clone()).unwrap_or_default()
    }

    fn max_conversations(&self) -> usize {
        self.max_conversations
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
        let served = self.door.get().ok_or_else(|| self.no_model())?;
        let ask = Ask {
            sampling: s,
            persona: persona.cloned(),
        };
        let conv = ask.join(&served)?;
        let name = format!("web {peer}");
        let as_persona = ask
            .persona
            .as_ref()
            .map(|p| format!("; persona {p}"))
            .unwrap_or_default();
        log::info!(
            "{name}: conversation slot {} of {} ({}{as_persona})",
            conv.slot(),
            served.hub.capacity(),
            served.hub.describe(),
        );
        self.shared.add_web_session(&name);
        Ok(Box::new(HubTalk {
            conv,
            hub: served.hub,
            door: self.door.clone(),
            ask,
            shared: self.shared.clone(),
            name,
        }))
    }

    fn personas(&self) -> Vec<String> {
        self.door
            .get()
            .and_then(|s| s.personas)
            .map(|c| c.names())
            .unwrap_or_default()
    }

    fn state(&self) -> DeviceState {
        let step_ms = self.shared.step_stats.figures().mean_ms;
        DeviceState::Appliance {
            snapshot: self.shared.snapshot(),
            voices: self.voices.clone(),
            step_ms: (step_ms * 10.0).round() / 10.0,
        }
    }

    fn control(&self, c: Control) -> Result<(), String> {
        let cmd = match c {
            Control::Mute(m) => Command::Mute(m),
            Control::Volume(v) => Command::Volume(v.min(100)),
            Control::Voice(v) if self.voices.contains(&v) => Command::Voice(v),
            Control::Voice(v) => return Err(format!("unknown voice {v:?}")),
        };
        self.send(Event::Command(cmd))
    }

    fn room(&self, since: u64) -> Option<crate::room::RoomView> {
        Some(self.shared.room.view(since))
    }

    fn room_conversation(&self, on: bool) -> Result<(), String> {
        self.send(Event::Command(Command::Conversation(on)))
    }

    fn count_dropped(&self, input: u64, output: u64) {
        let s = &self.shared;
        s.web_dropped_input.fetch_add(input, Ordering::Relaxed);
        s.web_dropped_output.fetch_add(output, Ordering::Relaxed);
    }
}

/// What a session asked for: its sampling, and maybe a persona (resolved against each
/// model it joins: a persona's prompted state belongs to one model's weights).
struct Ask {
    sampling: SessionSampling,
    persona: Option<PersonaRequest>,
}

impl Ask {
    /// A conversation on `served` as asked (the error is the session's message).
    fn join(&self, served: &Served) -> Result<HubConversation, String> {
        let persona = match (&self.persona, &served.personas) {
            (None, _) => None,
            (Some(p), Some(cache)) => Some(cache.get(p).map_err(|e| e.to_string())?),
            (Some(p), None) => return Err(format!("persona {p}: this model takes no persona")),
        };
        let named = persona.is_some();
        let request = JoinRequest {
            sampling: sampling_override(&self.sampling),
            persona,
        };
        served.hub.join(request).map_err(|e| match named {
            true => e.0,
            false => format!("busy: {}", e.0),
        })
    }
}

/// A web session's conversation. When the supervisor replaced the model (a voice
/// switch), the session joins the new one and its conversation restarts.
struct HubTalk {
    conv: HubConversation,
    /// The hub `conv` belongs to.
    hub: HubHandle,
    door: HubDoor,
    ask: Ask,
    shared: Arc<Shared>,
    name: String,
}

impl HubTalk {
    /// Joins the model that runs now, if it is another than ours.
    fn follow_new_model(&mut self) -> Option<()> {
        let now = self.door.get().filter(|s| !s.hub.same(&self.hub))?;
        let conv = self.ask.join(&now).ok()?;
        log::info!(
            "{}: the model was replaced; the conversation restarts on it",
            self.name
        );
        self.conv = conv;
        self.hub = now.hub;
        Some(())
    }
}

impl Talk for HubTalk {
    fn step(&mut self, input: &[f32], output: &mut [f32], text: &mut String) -> Result<(), String> {
        match self.conv.step(input, output, text) {
            Ok(()) => Ok(()),
            Err(e) => match self.follow_new_model() {
                Some(()) => {
                    output.fill(0.0);
                    Ok(())
                }
                None => Err(e.to_string()),
            },
        }
    }

    fn ended(&self) -> Option<String> {
        None
    }
}

impl Drop for HubTalk {
    fn drop(&mut self) {
        self.shared.remove_web_session(&self.name);
    }
}
