//! `moshid_mimi`: moshid's Mimi codec for Python, with the API of Kyutai's `rustymimi`
//! (`Tokenizer`, `StreamTokenizer`, `write_wav`), so a script switches with one import line.
//!
//! Beyond rustymimi: a `device` argument, the Mimi configuration as an optional `config`
//! argument (a dict or a JSON path, e.g. the reduced test fixtures), the GIL released while
//! Mimi computes, and every input checked (a Python exception, never a crash).

mod arrays;
mod checkpoint;
mod errors;
mod options;
mod stream;
mod tokenizer;
mod wav;

use pyo3::prelude::*;

/// The Python module.
#[pymodule]
fn moshid_mimi(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<tokenizer::Tokenizer>()?;
    m.add_class::<stream::StreamTokenizer>()?;
    m.add_function(wrap_pyfunction!(wav::write_wav, m)?)?;
    m.add_function(wrap_pyfunction!(checkpoint::write_random_checkpoint, m)?)?;
    m.add("SAMPLE_RATE", moshid_models::mimi::SAMPLE_RATE)?;
    m.add("FRAME_SAMPLES", moshid_models::mimi::FRAME_SAMPLES)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
