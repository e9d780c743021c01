//! Checking numpy inputs (type, dtype, rank, shape, values) and building numpy outputs.
//!
//! Inputs are copied into Rust vectors while the GIL is held, so the computation that follows
//! (with the GIL released) never reads memory that Python code could be changing.

use numpy::ndarray::{Array2, Array3};
use numpy::{
    Element, IntoPyArray, PyArray2, PyArray3, PyArrayDescrMethods, PyArrayDyn, PyArrayMethods,
    PyUntypedArray, PyUntypedArrayMethods,
};
use pyo3::prelude::*;

use crate::errors::{runtime_err, type_err, value_err};

/// Audio for a batch of streams: `batch` rows of `samples` samples (channel 1 only).
pub struct Pcm {
    /// Row-major `[batch, samples]`.
    pub data: Vec<f32>,
    /// Streams.
    pub batch: usize,
    /// Samples per stream.
    pub samples: usize,
}

/// Codes, row-major `[batch, books, frames]` (the layout rustymimi uses).
pub struct Codes {
    /// The codes.
    pub data: Vec<u32>,
    /// Streams.
    pub batch: usize,
    /// Codebooks per frame.
    pub books: usize,
    /// Frames.
    pub frames: usize,
}

impl Codes {
    /// Stream `b`'s codes frame by frame (`frames` vectors of `books` codes), the layout
    /// [`moshid_models::mimi::Mimi`] takes.
    pub fn frames_of(&self, b: usize) -> Vec<Vec<u32>> {
        let base = b * self.books * self.frames;
        (0..self.frames)
            .map(|f| {
                (0..self.books)
                    .map(|k| self.data[base + k * self.frames + f])
                    .collect()
            })
            .collect()
    }
}

/// `obj` as a numpy array of rank `ndim`, else a `TypeError` / `ValueError` naming `arg`
/// and the expected `layout`.
fn ndarray<'py>(
    obj: &Bound<'py, PyAny>,
    arg: &str,
    ndim: usize,
    layout: &str,
) -> PyResult<Bound<'py, PyUntypedArray>> {
    let arr = obj.cast::<PyUntypedArray>().map_err(|_| {
        let ty = obj
            .get_type()
            .name()
            .map(|n| n.to_string())
            .unwrap_or_else(|_| "?".into());
        type_err(format!("{arg} must be a numpy.ndarray {layout}, got {ty}"))
    })?;
    if arr.ndim() != ndim {
        return Err(value_err(format!(
            "{arg} must have {ndim} dimension(s) {layout}, got shape {:?}",
            arr.shape()
        )));
    }
    Ok(arr.clone())
}

/// The float32 values of `arr` in C order; `TypeError` for another dtype, `ValueError` for
/// NaN or infinity.
fn float32_values(arr: &Bound<'_, PyUntypedArray>, arg: &str) -> PyResult<Vec<f32>> {
    let py = arr.py();
    if !arr.dtype().is_equiv_to(&numpy::dtype::<f32>(py)) {
        return Err(type_err(format!(
            "{arg} must have dtype float32, got {}; convert with .astype(numpy.float32)",
            arr.dtype()
        )));
    }
    let typed = arr.cast::<PyArrayDyn<f32>>()?;
    let ro = typed.try_readonly()?;
    let data: Vec<f32> = ro.as_array().iter().copied().collect();
    if let Some(i) = data.iter().position(|x| !x.is_finite()) {
        return Err(value_err(format!(
            "{arg} holds a non-finite sample ({}) at flat index {i}",
            data[i]
        )));
    }
    Ok(data)
}

/// The values of an integer array as u32 codes below `cardinality`, in C order.
fn code_values(
    arr: &Bound<'_, PyUntypedArray>,
    arg: &str,
    cardinality: usize,
) -> PyResult<Vec<u32>> {
    let kind = arr.dtype().kind();
    let wide: Vec<i128> = match kind {
        b'u' => values_as::<u64>(arr, "uint64")?
            .into_iter()
            .map(i128::from)
            .collect(),
        b'i' => values_as::<i64>(arr, "int64")?
            .into_iter()
            .map(i128::from)
            .collect(),
        _ => {
            return Err(type_err(format!(
                "{arg} must be an integer array (uint32 codes), got dtype {}",
                arr.dtype()
            )))
        }
    };
    let shape = arr.shape().to_vec();
    wide.iter()
        .enumerate()
        .map(|(i, &c)| {
            u32::try_from(c)
                .ok()
                .filter(|&c| (c as usize) < cardinality)
                .ok_or_else(|| {
                    value_err(format!(
                        "{arg}{:?} = {c} is out of range: codes are 0..{cardinality}",
                        unravel(i, &shape)
                    ))
                })
        })
        .collect()
}

/// The array's values converted (by numpy, same kind so no rounding) to `T`.
fn values_as<T: Element + Copy>(arr: &Bound<'_, PyUntypedArray>, name: &str) -> PyResult<Vec<T>> {
    let conv = arr.call_method1("astype", (name,))?;
    let typed = conv.cast::<PyArrayDyn<T>>()?;
    let ro = typed.try_readonly()?;
    let v = ro.as_array().iter().copied().collect();
    Ok(v)
}

/// The multi-index of flat C-order index `i` in `shape`.
fn unravel(mut i: usize, shape: &[usize]) -> Vec<usize> {
    let mut idx = vec![0; shape.len()];
    for (d, &n) in shape.iter().enumerate().rev() {
        idx[d] = i % n.max(1);
        i /= n.max(1);
    }
    idx
}

/// `[batch, channels, samples]` float32 audio with one channel.
pub fn pcm_batch(obj: &Bound<'_, PyAny>, arg: &str) -> PyResult<Pcm> {
    let arr = ndarray(obj, arg, 3, "[batch, channels, samples] of float32")?;
    let shape = arr.shape().to_vec();
    if shape[1] != 1 {
        return Err(value_err(format!(
            "{arg} must be mono (shape [batch, 1, samples]), got shape {shape:?}"
        )));
    }
    if shape[0] == 0 {
        return Err(value_err(format!(
            "{arg} has an empty batch (shape {shape:?})"
        )));
    }
    Ok(Pcm {
        data: float32_values(&arr, arg)?,
        batch: shape[0],
        samples: shape[2],
    })
}

/// One-dimensional float32 audio.
pub fn pcm_1d(obj: &Bound<'_, PyAny>, arg: &str) -> PyResult<Vec<f32>> {
    let arr = ndarray(obj, arg, 1, "[samples] of float32")?;
    float32_values(&arr, arg)
}

/// `[batch, books, frames]` integer codes with exactly `books` codebooks.
pub fn codes_batch(
    obj: &Bound<'_, PyAny>,
    arg: &str,
    books: usize,
    cardinality: usize,
) -> PyResult<Codes> {
    let arr = ndarray(obj, arg, 3, "[batch, codebooks, frames] of uint32")?;
    let shape = arr.shape().to_vec();
    check_books(arg, &shape, 1, books)?;
    if shape[0] == 0 {
        return Err(value_err(format!(
            "{arg} has an empty batch (shape {shape:?})"
        )));
    }
    Ok(Codes {
        data: code_values(&arr, arg, cardinality)?,
        batch: shape[0],
        books,
        frames: shape[2],
    })
}

/// `[books, frames]` integer codes with exactly `books` codebooks.
pub fn codes_2d(
    obj: &Bound<'_, PyAny>,
    arg: &str,
    books: usize,
    cardinality: usize,
) -> PyResult<Codes> {
    let arr = ndarray(obj, arg, 2, "[codebooks, frames] of uint32")?;
    let shape = arr.shape().to_vec();
    check_books(arg, &shape, 0, books)?;
    Ok(Codes {
        data: code_values(&arr, arg, cardinality)?,
        batch: 1,
        books,
        frames: shape[1],
    })
}

fn check_books(arg: &str, shape: &[usize], axis: usize, books: usize) -> PyResult<()> {
    if shape[axis] != books {
        return Err(value_err(format!(
            "{arg} has {} codebooks (axis {axis} of shape {shape:?}), expected num_codebooks = {books}",
            shape[axis]
        )));
    }
    Ok(())
}

/// A new numpy array of shape `shape` holding `data` (row-major).
pub fn array3<'py, T: Element>(
    py: Python<'py>,
    data: Vec<T>,
    shape: [usize; 3],
) -> PyResult<Bound<'py, PyArray3<T>>> {
    let a =
        Array3::from_shape_vec(shape, data).map_err(|e| runtime_err(format!("internal: {e}")))?;
    Ok(a.into_pyarray(py))
}

/// A new 2-D numpy array of shape `shape` holding `data` (row-major).
pub fn array2<'py, T: Element>(
    py: Python<'py>,
    data: Vec<T>,
    shape: [usize; 2],
) -> PyResult<Bound<'py, PyArray2<T>>> {
    let a =
        Array2::from_shape_vec(shape, data).map_err(|e| runtime_err(format!("internal: {e}")))?;
    Ok(a.into_pyarray(py))
}

/// Frame-major codes (`frames` vectors of `books`) as one stream's row-major `[books, frames]`.
pub fn books_major(frames: &[Vec<u32>], books: usize) -> Vec<u32> {
    let n = frames.len();
    let mut out = vec![0u32; books * n];
    for (f, frame) in frames.iter().enumerate() {
        for (k, &c) in frame.iter().enumerate().take(books) {
            out[k * n + f] = c;
        }
    }
    out
}
