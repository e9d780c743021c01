//! `Tokenizer`: whole-signal and streaming encode/decode, rustymimi's `Tokenizer` API.

use std::path::PathBuf;

use moshid_models::mimi::{Mimi, MimiError};
use pyo3::prelude::*;

use crate::arrays::{array3, books_major, codes_batch, pcm_batch, Codes, Pcm};
use crate::errors::{mimi_err, value_err};
use crate::options::{device_name, LoadArgs};

/// One streaming state (a batch row, or a `StreamTokenizer` worker), plus audio not yet
/// making a whole frame.
pub struct Stream {
    mimi: Mimi,
    pending: Vec<f32>,
}

/// Mimi encoder and decoder: `encode`/`decode` take whole signals (fresh state each call),
/// `encode_step`/`decode_step` continue a stream until `reset()`.
#[pyclass(module = "moshid_mimi")]
pub struct Tokenizer {
    model: Mimi,
    streams: Vec<Stream>,
    device: candle_core::Device,
}

#[pymethods]
impl Tokenizer {
    #[new]
    #[pyo3(signature = (path, *, num_codebooks=8, dtype="f32", max_seq_len=None, device="cpu", config=None))]
    fn new(
        py: Python<'_>,
        path: PathBuf,
        num_codebooks: i64,
        dtype: &str,
        max_seq_len: Option<i64>,
        device: &str,
        config: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let args = LoadArgs::parse(path, num_codebooks, dtype, max_seq_len, device, config)?;
        Ok(Tokenizer {
            model: args.load(py)?,
            streams: Vec::new(),
            device: args.device,
        })
    }

    /// `pcm_data`: float32 `[batch, 1, samples]` at 24 kHz; returns uint32 codes
    /// `[batch, num_codebooks, frames]`, the last partial frame zero-padded.
    fn encode<'py>(
        &self,
        py: Python<'py>,
        pcm_data: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let pcm = pcm_batch(pcm_data, "pcm_data")?;
        let k = self.model.num_codebooks();
        let model = &self.model;
        let rows = py.detach(|| {
            (0..pcm.batch)
                .map(|b| model.encode(row(&pcm, b)))
                .collect::<Result<Vec<_>, _>>()
        });
        let rows = rows.map_err(mimi_err)?;
        let frames = rows.first().map_or(0, Vec::len);
        let data = rows.iter().flat_map(|r| books_major(r, k)).collect();
        Ok(array3(py, data, [pcm.batch, k, frames])?.into_any())
    }

    /// `codes`: integer `[batch, num_codebooks, frames]`; returns float32 audio
    /// `[batch, 1, frames * 1920]`.
    fn decode<'py>(
        &self,
        py: Python<'py>,
        codes: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let m = &self.model;
        let codes = codes_batch(codes, "codes", m.num_codebooks(), m.cardinality())?;
        let pcm = py.detach(|| {
            (0..codes.batch)
                .map(|b| m.decode(&codes.frames_of(b)))
                .collect::<Result<Vec<_>, _>>()
        });
        let pcm = pcm.map_err(mimi_err)?;
        let n = codes.frames * m.frame_samples();
        Ok(array3(py, pcm.concat(), [codes.batch, 1, n])?.into_any())
    }

    /// Streaming encode of float32 `[batch, 1, samples]` (any length; audio short of a whole
    /// 80 ms frame waits for the next call). Returns uint32 `[batch, num_codebooks, frames]`
    /// for the frames completed, or `None` when none was.
    fn encode_step<'py>(
        &mut self,
        py: Python<'py>,
        pcm_data: &Bound<'py, PyAny>,
    ) -> PyResult<Option<Bound<'py, PyAny>>> {
        let pcm = pcm_batch(pcm_data, "pcm_data")?;
        self.ensure_streams(pcm.batch)?;
        let k = self.model.num_codebooks();
        let fs = self.model.frame_samples();
        let streams = &mut self.streams;
        let out = py.detach(|| {
            streams
                .iter_mut()
                .enumerate()
                .map(|(b, s)| s.encode(row(&pcm, b), fs, k))
                .collect::<Result<Vec<_>, _>>()
        });
        let out = out.map_err(mimi_err)?;
        let frames = out.first().map_or(0, |r| r.len() / k);
        if frames == 0 {
            return Ok(None);
        }
        Ok(Some(
            array3(py, out.concat(), [pcm.batch, k, frames])?.into_any(),
        ))
    }

    /// Streaming decode of integer `[batch, num_codebooks, frames]`; returns float32
    /// `[batch, 1, frames * 1920]`, or `None` for zero frames.
    fn decode_step<'py>(
        &mut self,
        py: Python<'py>,
        codes: &Bound<'py, PyAny>,
    ) -> PyResult<Option<Bound<'py, PyAny>>> {
        let m = &self.model;
        let codes = codes_batch(codes, "codes", m.num_codebooks(), m.cardinality())?;
        self.ensure_streams(codes.batch)?;
        if codes.frames == 0 {
            return Ok(None);
        }
        let fs = self.model.frame_samples();
        let streams = &mut self.streams;
        let out = py.detach(|| decode_rows(streams, &codes, fs));
        let n = codes.frames * fs;
        Ok(Some(
            array3(py, out.map_err(mimi_err)?, [codes.batch, 1, n])?.into_any(),
        ))
    }

    /// Forgets the streaming state (encoder and decoder) and any buffered audio.
    fn reset(&mut self) {
        self.streams.clear();
    }

    /// Active codebooks per frame.
    #[getter]
    fn num_codebooks(&self) -> usize {
        self.model.num_codebooks()
    }

    /// Audio samples per 80 ms frame.
    #[getter]
    fn frame_size(&self) -> usize {
        self.model.frame_samples()
    }

    /// Entries per codebook (codes are `0..cardinality`).
    #[getter]
    fn cardinality(&self) -> usize {
        self.model.cardinality()
    }

    /// Where Mimi computes (`cpu` or `cuda:N`).
    #[getter]
    fn device(&self) -> String {
        device_name(&self.device)
    }
}

impl Tokenizer {
    /// Starts one stream per batch row on first use; a later call must keep the batch size.
    fn ensure_streams(&mut self, batch: usize) -> PyResult<()> {
        if self.streams.is_empty() {
            self.streams = (0..batch).map(|_| Stream::new(&self.model)).collect();
        } else if self.streams.len() != batch {
            return Err(value_err(format!(
                "the stream was started with batch size {}, got {batch}; call reset() to start another",
                self.streams.len()
            )));
        }
        Ok(())
    }
}

impl Stream {
    /// A fresh stream on `model`'s weights.
    pub fn new(model: &Mimi) -> Stream {
        let mut mimi = model.clone();
        mimi.reset();
        Stream {
            mimi,
            pending: Vec::new(),
        }
    }

    /// Audio samples per frame.
    pub fn frame_samples(&self) -> usize {
        self.mimi.frame_samples()
    }

    /// Decodes frame-major `frames` into `pcm` (`frames.len() * fs` samples).
    pub fn decode(&mut self, frames: &[Vec<u32>], pcm: &mut [f32]) -> Result<(), MimiError> {
        let fs = self.mimi.frame_samples();
        for (frame, out) in frames.iter().zip(pcm.chunks_mut(fs)) {
            self.mimi.decode_step(frame, out)?;
        }
        Ok(())
    }

    /// Buffers `pcm`, encodes the whole frames available; returns `[books, frames]` codes.
    pub fn encode(&mut self, pcm: &[f32], fs: usize, k: usize) -> Result<Vec<u32>, MimiError> {
        self.pending.extend_from_slice(pcm);
        let n = self.pending.len() / fs;
        let mut frames = vec![vec![0u32; k]; n];
        for (f, codes) in frames.iter_mut().enumerate() {
            self.mimi
                .encode_step(&self.pending[f * fs..(f + 1) * fs], codes)?;
        }
        self.pending.drain(..n * fs);
        Ok(books_major(&frames, k))
    }
}

/// Row `b` of a batch of audio.
fn row(pcm: &Pcm, b: usize) -> &[f32] {
    &pcm.data[b * pcm.samples..(b + 1) * pcm.samples]
}

/// Decodes each row's frames on its stream; returns row-major `[batch, frames * fs]` audio.
fn decode_rows(streams: &mut [Stream], codes: &Codes, fs: usize) -> Result<Vec<f32>, MimiError> {
    let mut out = vec![0f32; codes.batch * codes.frames * fs];
    for (b, (s, dst)) in streams
        .iter_mut()
        .zip(out.chunks_mut(codes.frames * fs))
        .enumerate()
    {
        s.decode(&codes.frames_of(b), dst)?;
    }
    Ok(out)
}
