#![no_main]
//! Fuzz target: moshid_fuzz::fuzz::config (daemon/src/fuzz.rs).
libfuzzer_sys::fuzz_target!(|data: &[u8]| moshid_fuzz::fuzz::config(data));
