//! The web endpoint: Kyutai's `/api/chat` WebSocket protocol (so Kyutai's web UI, its
//! Python and Rust clients and third-party clients can talk to the appliance), the page at
//! `/`, and the pieces they share with `moshid client`. Facts: PROTOCOL.md in the issue's
//! shared folder; the README's "Web" section for users.

pub mod auth;
pub mod backend;
pub mod chat_client;
pub mod client_tls;
pub mod config;
pub mod conns;
pub mod local;
pub mod ogg;
pub mod opus;
pub mod origin;
pub mod page;
pub mod params;
pub mod protocol;
pub mod remote;
pub mod server;
pub mod session;
pub mod stream;
pub mod tls;
