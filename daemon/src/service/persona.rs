//! `set/persona`: the room's conversation takes a persona. On the running weights (the
//! persona names no other `[voices]` entry) only the room's conversation changes: its
//! prompted state comes from the model's persona cache, computed on a thread of its own the
//! first time (a PersonaPlex prompt is 100+ LM steps), and the room joins the hub again
//! with it; web sessions keep theirs. A persona on other weights reloads the model with
//! `model.persona` set, as a voice switch does.

use super::{Event, Flow, Supervisor};
use crate::engine::{Persona, PersonaRequest};
use crate::moshi_engine::PersonaCache;

impl Supervisor {
    /// `set/persona NAME`.
    pub(super) fn switch_persona(&mut self, p: String) {
        let weights = self.cfg.personas.get(&p).and_then(|x| x.voice.clone());
        let same = weights
            .as_deref()
            .is_none_or(|v| Some(v) == self.slot.voice());
        match self.slot.personas() {
            Some(cache) if same && !self.loader.busy() => self.prepare_room_persona(cache, p),
            _ => self.reload_for_persona(p, weights),
        }
    }

    /// Computes (or finds) the persona's prompted state off the supervisor's thread; the
    /// result comes back as [`Event::RoomPersona`].
    pub(super) fn prepare_room_persona(&mut self, cache: PersonaCache, p: String) {
        log::info!(persona = p.as_str(); "the room's conversation takes a persona");
        self.shared.set_status(&format!("preparing persona {p}"));
        let tx = self.tx.clone();
        let spawned = std::thread::Builder::new()
            .name("moshid-persona".into())
            .spawn(move || {
                let r = cache
                    .get(&PersonaRequest::Named(p.clone()))
                    .map_err(|e| e.to_string());
                let _ = tx.send(Event::RoomPersona(Box::new((p, r))));
            });
        if let Err(e) = spawned {
            self.publish_error(&format!("set/persona: cannot start the prompt thread: {e}"));
        }
    }

    /// The persona's state is ready (or failed): the room's conversation restarts with it.
    pub(super) fn on_room_persona(&mut self, name: String, r: Result<Persona, String>) -> Flow {
        let done = r.and_then(|persona| {
            self.slot
                .set_room_persona(Some(persona))
                .map_err(|e| format!("{e:#}"))
        });
        match done {
            Ok(()) => {
                log::info!(persona = name.as_str(); "the room's conversation has its persona");
                self.shared.set_persona(Some(&name));
                self.shared.set_status(&format!("ready: persona {name}"));
            }
            Err(msg) => {
                let msg = format!("set/persona {name}: {msg}");
                log::error!("{msg}");
                self.publish_error(&msg);
                self.shared.set_warning(&msg);
            }
        }
        Flow::Continue
    }

    /// A persona on other weights: reload with `model.persona` = `p` (and those weights).
    fn reload_for_persona(&mut self, p: String, weights: Option<String>) {
        if !self.loader.busy() && self.cfg.model.persona.as_deref() == Some(p.as_str()) {
            return;
        }
        let mut cfg = self.cfg.clone();
        let voice = weights
            .or_else(|| self.slot.voice().map(str::to_string))
            .unwrap_or_else(|| cfg.model.voice.clone());
        log::info!(persona = p.as_str(); "switching persona (loading its model)");
        cfg.model.voice = voice.clone();
        cfg.model.persona = Some(p.clone());
        self.shared.set_persona(Some(&p));
        self.request_load(cfg, voice, false);
    }
}
