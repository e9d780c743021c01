//! Fuzz entry points for the parsers of outside input in the hal (WAV files). The cargo-fuzz
//! targets in `fuzz/` call these and `cargo test` replays the committed corpora through them
//! (`hal/tests/fuzz_corpus.rs`). Each must return for any input. Not part of the API.

use std::path::Path;

/// A WAV file: header, samples, downmix and resampling to the model rate.
pub fn wav(data: &[u8]) {
    let path = Path::new("fuzz.wav");
    if let Ok((samples, channels, rate)) = crate::wav::read_interleaved_from(data, path) {
        // Keep the resampling affordable: the header's rate is checked, the length is what
        // the input holds.
        let mono: Vec<f32> = samples
            .chunks_exact(channels)
            .map(|f| f.iter().sum::<f32>() / channels as f32)
            .take(48_000)
            .collect();
        let _ = crate::resample::resample_clip(&mono, rate, crate::MODEL_RATE);
    }
}
