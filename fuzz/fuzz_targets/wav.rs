#![no_main]
//! Fuzz target: moshid_hal::fuzz::wav (see that function).
libfuzzer_sys::fuzz_target!(|data: &[u8]| moshid_hal::fuzz::wav(data));
