//! The daemon's parsers of outside input, compiled here from the daemon's own sources.
//!
//! The daemon (`moshid`) is a binary crate with no library target. Rather than split it into
//! a library and a thin binary (every `mod` line and many `crate::` paths moving while other
//! work goes on in the same files), the few self-contained modules the parsers live in are
//! compiled into this crate with `#[path]`, at the same `crate::` paths they have in the
//! daemon, together with the daemon's fuzz entry points (daemon/src/fuzz.rs). So the targets
//! fuzz exactly the daemon's code, and a parser that grows a dependency on the rest of the
//! daemon fails this build rather than silently fuzzing a copy.

#![allow(dead_code, unused_imports)]

#[path = "../../daemon/src/codes.rs"]
pub mod codes;
#[path = "../../daemon/src/config/mod.rs"]
pub mod config;
#[path = "../../daemon/src/control.rs"]
pub mod control;
#[path = "../../daemon/src/fuzz.rs"]
pub mod fuzz;
pub mod web;
