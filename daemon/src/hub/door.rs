//! The way into whichever hub runs now: the supervisor owns the hub and puts its handle
//! here on every model load (and takes it away at shutdown); web sessions join through it
//! and, when the model was replaced under them (a voice switch), join the new one.

use super::HubHandle;
use std::sync::{Arc, RwLock};

/// A shared, replaceable [`HubHandle`].
#[derive(Clone, Default)]
pub struct HubDoor(Arc<RwLock<Option<HubHandle>>>);

impl HubDoor {
    /// Puts `hub` behind the door (None: no model runs).
    pub fn set(&self, hub: Option<HubHandle>) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = hub;
    }

    /// The hub that runs now.
    pub fn get(&self) -> Option<HubHandle> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}
