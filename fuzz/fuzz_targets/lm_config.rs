#![no_main]
//! Fuzz target: moshid_models::fuzz::lm_config (see that function).
libfuzzer_sys::fuzz_target!(|data: &[u8]| moshid_models::fuzz::lm_config(data));
