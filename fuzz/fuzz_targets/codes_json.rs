#![no_main]
//! Fuzz target: moshid_fuzz::fuzz::codes_json (daemon/src/fuzz.rs).
libfuzzer_sys::fuzz_target!(|data: &[u8]| moshid_fuzz::fuzz::codes_json(data));
