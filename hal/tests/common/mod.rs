//! Shared test signals: speech clips and a synthetic room.
#![allow(dead_code)]

use std::path::PathBuf;

/// A committed test clip, read as 24 kHz mono.
pub fn clip(name: &str) -> Vec<f32> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name);
    moshid_hal::wav::read_mono_24k(&p).expect("committed test clip")
}

/// Deterministic uniform noise in [-1, 1] (xorshift), so tests need no RNG crate.
pub fn noise(n: usize, mut seed: u64) -> Vec<f32> {
    (0..n)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

/// A room-like impulse response at 24 kHz: `delay_ms` of silence, then exponentially
/// decaying noise with the given RT60, normalised to unit energy.
pub fn room_ir(delay_ms: f32, rt60_ms: f32, len_ms: f32, seed: u64) -> Vec<f32> {
    let d = (delay_ms * 24.0) as usize;
    let n = (len_ms * 24.0) as usize;
    let tau = rt60_ms * 24.0 / 6.91; // amplitude falls 60 dB (e^-6.91) over RT60
    let mut h = vec![0.0; d + n];
    for (i, v) in noise(n, seed).into_iter().enumerate() {
        h[d + i] = v * (-(i as f32) / tau).exp();
    }
    let e = h.iter().map(|v| v * v).sum::<f32>().sqrt();
    h.iter_mut().for_each(|v| *v /= e);
    h
}

/// Linear convolution truncated to `x.len()`.
pub fn convolve(x: &[f32], h: &[f32]) -> Vec<f32> {
    let mut y = vec![0.0f32; x.len()];
    for (i, &xi) in x.iter().enumerate() {
        if xi == 0.0 {
            continue;
        }
        for (yj, &hj) in y[i..].iter_mut().zip(h) {
            *yj += xi * hj;
        }
    }
    y
}

pub fn rms(x: &[f32]) -> f32 {
    (x.iter().map(|v| v * v).sum::<f32>() / x.len().max(1) as f32).sqrt()
}

/// Normalised cross-correlation at lag 0.
pub fn correlation(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let ab: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let aa: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum();
    let bb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum();
    (ab / (aa * bb).sqrt().max(1e-30)) as f32
}
