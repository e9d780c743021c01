//! `StreamTokenizer`: streaming encode/decode on two background threads (rustymimi's API).
//!
//! `encode`/`decode` check their input and queue it at once; the workers compute without
//! the GIL; `get_encoded`/`get_decoded` return the next result, or `None` when none is ready.
//! A worker's error is raised by the `get_*` call that would have returned its result.

use std::path::PathBuf;
use std::sync::mpsc::{channel, Receiver, Sender, TryRecvError};
use std::sync::Mutex;

use pyo3::prelude::*;

use crate::arrays::{array2, codes_2d, pcm_1d, Codes};
use crate::errors::runtime_err;
use crate::options::LoadArgs;
use crate::tokenizer::Stream;

/// A worker's answer: the result, or the error's message.
type Reply<T> = Result<T, String>;

/// Rustymimi's `StreamTokenizer`: one stream, encoded and decoded on background threads.
#[pyclass(module = "moshid_mimi")]
pub struct StreamTokenizer {
    enc_tx: Sender<Vec<f32>>,
    enc_rx: Mutex<Receiver<Reply<Vec<u32>>>>,
    dec_tx: Sender<Codes>,
    dec_rx: Mutex<Receiver<Reply<Vec<f32>>>>,
    books: usize,
    cardinality: usize,
}

#[pymethods]
impl StreamTokenizer {
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
        let model = args.load(py)?;
        let (enc_tx, enc_in) = channel();
        let (enc_out, enc_rx) = channel();
        let (dec_tx, dec_in) = channel();
        let (dec_out, dec_rx) = channel();
        let dims = (model.frame_samples(), model.num_codebooks());
        spawn("moshid-mimi-encode", Stream::new(&model), move |s| {
            encoder_loop(s, dims, enc_in, enc_out)
        })?;
        spawn("moshid-mimi-decode", Stream::new(&model), move |s| {
            decoder_loop(s, dec_in, dec_out)
        })?;
        Ok(StreamTokenizer {
            enc_tx,
            enc_rx: Mutex::new(enc_rx),
            dec_tx,
            dec_rx: Mutex::new(dec_rx),
            books: model.num_codebooks(),
            cardinality: model.cardinality(),
        })
    }

    /// Queues float32 audio `[samples]` (any length) for encoding.
    fn encode(&self, pcm_data: &Bound<'_, PyAny>) -> PyResult<()> {
        let pcm = pcm_1d(pcm_data, "pcm_data")?;
        self.enc_tx.send(pcm).map_err(|_| stopped("encoder"))
    }

    /// Queues integer codes `[num_codebooks, frames]` for decoding.
    fn decode(&self, codes: &Bound<'_, PyAny>) -> PyResult<()> {
        let codes = codes_2d(codes, "codes", self.books, self.cardinality)?;
        self.dec_tx.send(codes).map_err(|_| stopped("decoder"))
    }

    /// The codes of the next `encode` call that completed a frame: uint32
    /// `[num_codebooks, frames]`, or `None` when none is ready.
    fn get_encoded<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        let books = self.books;
        match next(&self.enc_rx, "encoder")? {
            Some(codes) => {
                let frames = codes.len() / books;
                Ok(Some(array2(py, codes, [books, frames])?.into_any()))
            }
            None => Ok(None),
        }
    }

    /// The audio of the next `decode` call: float32 `[frames * 1920]`, or `None`.
    fn get_decoded<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        match next(&self.dec_rx, "decoder")? {
            Some(pcm) => Ok(Some(numpy::PyArray1::from_vec(py, pcm).into_any())),
            None => Ok(None),
        }
    }

    /// Active codebooks per frame.
    #[getter]
    fn num_codebooks(&self) -> usize {
        self.books
    }
}

/// Starts a named worker thread that owns `stream`.
fn spawn(name: &str, stream: Stream, work: impl FnOnce(Stream) + Send + 'static) -> PyResult<()> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || work(stream))
        .map(drop)
        .map_err(|e| runtime_err(format!("cannot start the {name} thread: {e}")))
}

/// Encodes queued audio until the tokenizer is dropped; answers only calls that completed
/// at least one frame (as rustymimi does).
fn encoder_loop(
    mut s: Stream,
    dims: (usize, usize),
    rx: Receiver<Vec<f32>>,
    tx: Sender<Reply<Vec<u32>>>,
) {
    let (fs, k) = dims;
    while let Ok(pcm) = rx.recv() {
        let reply = s.encode(&pcm, fs, k).map_err(|e| e.to_string());
        if matches!(&reply, Ok(c) if c.is_empty()) {
            continue;
        }
        if tx.send(reply).is_err() {
            break;
        }
    }
}

/// Decodes queued codes until the tokenizer is dropped; one answer per `decode` call.
fn decoder_loop(mut s: Stream, rx: Receiver<Codes>, tx: Sender<Reply<Vec<f32>>>) {
    while let Ok(codes) = rx.recv() {
        let frames = codes.frames_of(0);
        if frames.is_empty() {
            continue;
        }
        let mut pcm = vec![0f32; frames.len() * s.frame_samples()];
        let reply = s
            .decode(&frames, &mut pcm)
            .map(|()| pcm)
            .map_err(|e| e.to_string());
        if tx.send(reply).is_err() {
            break;
        }
    }
}

/// The next reply without waiting: `None` when nothing is ready.
fn next<T>(rx: &Mutex<Receiver<Reply<T>>>, which: &str) -> PyResult<Option<T>> {
    let rx = rx
        .lock()
        .map_err(|_| runtime_err(format!("the {which} queue is poisoned")))?;
    match rx.try_recv() {
        Ok(Ok(v)) => Ok(Some(v)),
        Ok(Err(msg)) => Err(runtime_err(format!("{which} thread: {msg}"))),
        Err(TryRecvError::Empty) => Ok(None),
        Err(TryRecvError::Disconnected) => Err(stopped(which)),
    }
}

fn stopped(which: &str) -> PyErr {
    runtime_err(format!("the {which} thread has stopped"))
}
