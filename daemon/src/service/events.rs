//! The supervisor's inputs: every one is an [`Event`] on one channel, handled by one method
//! of `Supervisor`.

use super::loader::LoadDone;
use crate::control::Command;
use anyhow::Context;
use std::sync::mpsc::Sender;

/// Something the supervisor must react to.
pub enum Event {
    /// SIGTERM or SIGINT: stop within 2 s.
    Stop,
    /// SIGHUP: re-read the configuration.
    Reload,
    /// A validated MQTT command.
    Command(Command),
    /// The loader finished (a model, a failure, or a cancelled load).
    Loaded(Box<LoadDone>),
    /// A part that runs on its own failed (a satellite's link to its brain): said once on
    /// `error`; the state already says it.
    Fault(String),
    /// A persona's prompted state for the room's conversation (`set/persona`), or why it
    /// could not be had.
    RoomPersona(Box<(String, Result<crate::engine::Persona, String>)>),
    /// Nothing else happened for 100 ms: periodic duties.
    Tick,
}

/// Forwards SIGTERM/SIGINT/SIGHUP as events.
pub fn spawn_signals(tx: Sender<Event>) -> anyhow::Result<signal_hook::iterator::Handle> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP])
        .context("cannot install signal handlers")?;
    let handle = signals.handle();
    std::thread::Builder::new()
        .name("moshid-signals".into())
        .spawn(move || {
            for s in signals.forever() {
                let ev = if s == SIGHUP {
                    Event::Reload
                } else {
                    Event::Stop
                };
                if tx.send(ev).is_err() {
                    break;
                }
            }
        })
        .context("cannot start the signal thread")?;
    Ok(handle)
}
