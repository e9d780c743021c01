//! Mapping moshid's errors onto Python exceptions.
//!
//! Bad input (shapes, dtypes, values, a checkpoint that does not match the config) is a
//! `ValueError` or `TypeError`, an unreadable file an `OSError`, a failure inside the
//! computation a `RuntimeError`; nothing panics across the FFI boundary.

use moshid_models::mimi::MimiError;
use pyo3::exceptions::{PyFileNotFoundError, PyOSError, PyRuntimeError, PyTypeError, PyValueError};
use pyo3::PyErr;

/// Converts a Mimi error into the Python exception that fits it.
pub fn mimi_err(e: MimiError) -> PyErr {
    let msg = e.to_string();
    match e {
        MimiError::Io { error, .. } if error.kind() == std::io::ErrorKind::NotFound => {
            PyFileNotFoundError::new_err(msg)
        }
        MimiError::Io { .. } => PyOSError::new_err(msg),
        MimiError::Candle(_) => PyRuntimeError::new_err(msg),
        // Everything else is about the caller's input: the file, config or arguments.
        _ => PyValueError::new_err(msg),
    }
}

/// A `ValueError` with `msg`.
pub fn value_err(msg: impl Into<String>) -> PyErr {
    PyValueError::new_err(msg.into())
}

/// A `TypeError` with `msg`.
pub fn type_err(msg: impl Into<String>) -> PyErr {
    PyTypeError::new_err(msg.into())
}

/// A `RuntimeError` with `msg`.
pub fn runtime_err(msg: impl Into<String>) -> PyErr {
    PyRuntimeError::new_err(msg.into())
}
