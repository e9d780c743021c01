//! `write_wav`: mono float audio to a 16-bit PCM WAV file, as rustymimi writes it.

use std::path::PathBuf;

use pyo3::prelude::*;

use crate::arrays::pcm_1d;
use crate::errors::value_err;
use pyo3::exceptions::PyOSError;

/// Writes `data` (float32 `[samples]`, clamped to [-1, 1], scaled by 32767 and truncated
/// like rustymimi) as a mono 16-bit PCM WAV file at `sample_rate` Hz.
#[pyfunction]
#[pyo3(signature = (filename, data, sample_rate))]
pub fn write_wav(
    py: Python<'_>,
    filename: PathBuf,
    data: &Bound<'_, PyAny>,
    sample_rate: i64,
) -> PyResult<()> {
    let pcm = pcm_1d(data, "data")?;
    let rate = u32::try_from(sample_rate)
        .ok()
        .filter(|&r| r > 0)
        .ok_or_else(|| {
            value_err(format!(
                "sample_rate must be a positive integer, got {sample_rate}"
            ))
        })?;
    py.detach(|| write(&filename, &pcm, rate))
        .map_err(|e| PyOSError::new_err(format!("cannot write {}: {e}", filename.display())))
}

fn write(path: &std::path::Path, pcm: &[f32], sample_rate: u32) -> Result<(), hound::Error> {
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(path, spec)?;
    for &x in pcm {
        // `as` truncates toward zero: the same integers rustymimi's writer gives.
        w.write_sample((x.clamp(-1.0, 1.0) * 32767.0) as i16)?;
    }
    w.finalize()
}
