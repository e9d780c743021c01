//! `write_random_checkpoint`: a deterministic random-weight Mimi in the released format, for
//! tests and benchmarks without Kyutai's weights.

use std::path::PathBuf;

use moshid_models::mimi::{write_random_checkpoint as write, MimiError};
use pyo3::exceptions::PyOSError;
use pyo3::prelude::*;

use crate::errors::{mimi_err, value_err};
use crate::options::parse_config;

/// Writes a safetensors checkpoint with every tensor of `config` (default: the released,
/// full-size Mimi), filled deterministically from `seed`.
#[pyfunction]
#[pyo3(signature = (path, *, seed=0, config=None))]
pub fn write_random_checkpoint(
    py: Python<'_>,
    path: PathBuf,
    seed: i64,
    config: Option<&Bound<'_, PyAny>>,
) -> PyResult<()> {
    let cfg = parse_config(config)?;
    let seed =
        u64::try_from(seed).map_err(|_| value_err(format!("seed must be >= 0, got {seed}")))?;
    py.detach(|| write(&cfg, seed, &path)).map_err(|e| match e {
        // The writer's only checkpoint error is failing to write the file.
        MimiError::Checkpoint { .. } => PyOSError::new_err(e.to_string()),
        e => mimi_err(e),
    })
}
