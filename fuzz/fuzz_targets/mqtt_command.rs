#![no_main]
//! Fuzz target: moshid_fuzz::fuzz::mqtt_command (daemon/src/fuzz.rs).
libfuzzer_sys::fuzz_target!(|data: &[u8]| moshid_fuzz::fuzz::mqtt_command(data));
