//! The web endpoint's Ogg reader, Opus stream and message kinds (daemon/src/web/).

#[path = "../../daemon/src/web/ogg.rs"]
pub mod ogg;
#[path = "../../daemon/src/web/opus.rs"]
pub mod opus;
#[path = "../../daemon/src/web/protocol.rs"]
pub mod protocol;
#[path = "../../daemon/src/web/stream.rs"]
pub mod stream;
#[path = "../../daemon/src/web/auth.rs"]
pub mod auth;
#[path = "../../daemon/src/web/config.rs"]
pub mod config;
