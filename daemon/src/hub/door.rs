//! The way into whichever hub runs now: the supervisor owns the hub and puts its handle
//! here on every model load (and takes it away at shutdown); web sessions join through it
//! and, when the model was replaced under them (a voice switch), join the new one.

use super::HubHandle;
use crate::moshi_engine::PersonaCache;
use std::sync::{Arc, RwLock};

/// What runs now: the hub, and the personas its model's conversations may ask for.
#[derive(Clone)]
pub struct Served {
    /// The hub.
    pub hub: HubHandle,
    /// Its model's personas (None: it takes none).
    pub personas: Option<PersonaCache>,
}

/// A shared, replaceable [`Served`].
#[derive(Clone, Default)]
pub struct HubDoor(Arc<RwLock<Option<Served>>>);

impl HubDoor {
    /// Puts what runs behind the door (None: no model runs).
    pub fn set(&self, served: Option<Served>) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = served;
    }

    /// What runs now.
    pub fn get(&self) -> Option<Served> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}
