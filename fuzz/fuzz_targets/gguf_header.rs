#![no_main]
//! Fuzz target: moshid_models::fuzz::gguf_header (see that function).
libfuzzer_sys::fuzz_target!(|data: &[u8]| moshid_models::fuzz::gguf_header(data));
