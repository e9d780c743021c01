//! Where Mimi's weights come from: a prefix-scoped, recording getter (like candle's
//! `VarBuilder`). The code that builds each part asks for its tensors by name and shape;
//! against a checkpoint that checks and loads them, without one it makes them (zeros, or
//! random weights for a new checkpoint). Every request is recorded, so the list of tensors a
//! checkpoint must hold, the "unexpected tensor" check and the random-checkpoint writer all
//! come from the loading code itself and cannot drift from it.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};

use super::MimiError;

/// Makes the values of a tensor from its full name and shape.
pub(crate) type Fill<'a> = Box<dyn FnMut(&str, &[usize]) -> Vec<f32> + 'a>;

enum Source<'a> {
    /// A memory-mapped checkpoint and the shapes its header lists.
    File {
        st: MmapedSafetensors,
        present: HashMap<String, Vec<usize>>,
    },
    /// No file: tensors are made by `fill`, and kept when `keep` is set.
    Made { fill: Fill<'a>, keep: bool },
}

struct State<'a> {
    source: Source<'a>,
    path: PathBuf,
    device: Device,
    /// Dtype of what [`Vars::get`] returns (the quantizer asks for f32 with `get_f32`).
    dtype: DType,
    /// Every (full name, shape) asked for, in order of first request.
    recorded: Vec<(String, Vec<usize>)>,
    seen: HashSet<String>,
    made: HashMap<String, Tensor>,
}

/// A view of the weights under one name prefix; cheap to clone and scope further.
#[derive(Clone)]
pub(crate) struct Vars<'a> {
    state: Rc<RefCell<State<'a>>>,
    prefix: String,
}

impl<'a> Vars<'a> {
    /// Maps the checkpoint at `path` (tensors are checked as they are asked for).
    pub(crate) fn open(path: &Path, device: &Device) -> Result<Vars<'static>, MimiError> {
        let pb = path.to_path_buf();
        let meta = std::fs::metadata(path).map_err(|e| MimiError::Io {
            path: pb.clone(),
            error: e,
        })?;
        if !meta.is_file() {
            return Err(MimiError::Checkpoint {
                path: pb,
                msg: "is not a regular file".into(),
            });
        }
        // SAFETY: the file is mapped read-only; moshid replaces files it writes by renaming
        // a new one over them, so a mapped file is never modified in place. Another process
        // truncating it underneath would be a misuse we cannot guard against.
        let st = unsafe { MmapedSafetensors::new(path) }.map_err(|e| MimiError::Checkpoint {
            path: pb.clone(),
            msg: format!("not a readable safetensors file ({e}); re-download it"),
        })?;
        let present = st
            .tensors()
            .into_iter()
            .map(|(n, v)| (n, v.shape().to_vec()))
            .collect();
        Ok(Vars::new(Source::File { st, present }, pb, device))
    }

    /// No checkpoint: every tensor is `fill(name, shape)` on the CPU; `keep` keeps them for
    /// [`Vars::take_made`].
    pub(crate) fn made(fill: Fill<'a>, keep: bool) -> Vars<'a> {
        let source = Source::Made { fill, keep };
        Vars::new(source, PathBuf::from("(generated)"), &Device::Cpu)
    }

    fn new(source: Source<'a>, path: PathBuf, device: &Device) -> Vars<'a> {
        let state = State {
            source,
            path,
            device: device.clone(),
            dtype: DType::F32,
            recorded: Vec::new(),
            seen: HashSet::new(),
            made: HashMap::new(),
        };
        Vars {
            state: Rc::new(RefCell::new(state)),
            prefix: String::new(),
        }
    }

    /// The same weights under `prefix.part`.
    pub(crate) fn pp(&self, part: impl std::fmt::Display) -> Vars<'a> {
        let prefix = if self.prefix.is_empty() {
            part.to_string()
        } else {
            format!("{}.{part}", self.prefix)
        };
        Vars {
            state: self.state.clone(),
            prefix,
        }
    }

    pub(crate) fn device(&self) -> Device {
        self.state.borrow().device.clone()
    }

    /// The dtype [`Vars::get`] returns.
    pub(crate) fn dtype(&self) -> DType {
        self.state.borrow().dtype
    }

    /// Makes [`Vars::get`] return `dtype` from now on (f32 by default), for every view of
    /// these weights. Converted on the host before the copy: a GPU below sm_80 has no bf16
    /// casts.
    pub(crate) fn set_dtype(&self, dtype: DType) {
        self.state.borrow_mut().dtype = dtype;
    }

    fn full(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.prefix)
        }
    }

    /// Tensor `name` (under this prefix) of `shape`, in the compute dtype (f32 unless
    /// [`Vars::set_dtype`] said otherwise) on the target device.
    pub(crate) fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor, MimiError> {
        let dtype = self.state.borrow().dtype;
        self.get_as(name, shape, dtype)
    }

    /// Tensor `name` as f32 whatever the compute dtype (the quantizer's).
    pub(crate) fn get_f32(&self, name: &str, shape: &[usize]) -> Result<Tensor, MimiError> {
        self.get_as(name, shape, DType::F32)
    }

    fn get_as(&self, name: &str, shape: &[usize], dtype: DType) -> Result<Tensor, MimiError> {
        let full = self.full(name);
        let mut s = self.state.borrow_mut();
        s.record(&full, shape)?;
        s.load(&full, shape, dtype)
    }

    /// Declares tensor `name` of `shape` without loading it: a buffer the computation does
    /// not use (`_initialized`) or a codebook level beyond the active ones. It must still be
    /// in the checkpoint, with this shape.
    pub(crate) fn declare(&self, name: &str, shape: &[usize]) -> Result<(), MimiError> {
        let full = self.full(name);
        let mut s = self.state.borrow_mut();
        s.record(&full, shape)?;
        if let Source::Made { .. } = s.source {
            s.load(&full, shape, DType::F32)?;
        }
        Ok(())
    }

    /// After building: refuses a checkpoint holding tensors nobody asked for, and returns
    /// every tensor asked for (name, shape) in order.
    pub(crate) fn finish(&self) -> Result<Vec<(String, Vec<usize>)>, MimiError> {
        let s = self.state.borrow();
        if let Source::File { present, .. } = &s.source {
            let mut extra: Vec<&String> = present.keys().filter(|n| !s.seen.contains(*n)).collect();
            extra.sort();
            if let Some(name) = extra.first() {
                return Err(MimiError::UnexpectedTensor {
                    path: s.path.clone(),
                    name: (*name).clone(),
                });
            }
        }
        Ok(s.recorded.clone())
    }

    /// The tensors made so far (with `keep`), by name.
    pub(crate) fn take_made(&self) -> HashMap<String, Tensor> {
        std::mem::take(&mut self.state.borrow_mut().made)
    }
}

impl State<'_> {
    /// Notes a request and checks it against the file's header.
    fn record(&mut self, name: &str, shape: &[usize]) -> Result<(), MimiError> {
        if !self.seen.insert(name.to_string()) {
            // Mimi's parts never share a tensor: a second request is a loader bug.
            return Err(MimiError::Config(format!(
                "internal: tensor `{name}` requested twice"
            )));
        }
        self.recorded.push((name.to_string(), shape.to_vec()));
        let Source::File { present, .. } = &self.source else {
            return Ok(());
        };
        match present.get(name) {
            None => Err(MimiError::MissingTensor {
                path: self.path.clone(),
                name: name.to_string(),
                expected: shape.to_vec(),
            }),
            Some(found) if found != shape => Err(MimiError::WrongShape {
                path: self.path.clone(),
                name: name.to_string(),
                expected: shape.to_vec(),
                found: found.clone(),
            }),
            Some(_) => Ok(()),
        }
    }

    fn load(&mut self, name: &str, shape: &[usize], dtype: DType) -> Result<Tensor, MimiError> {
        let t = match &mut self.source {
            Source::File { st, .. } => {
                let corrupt = |e: String| MimiError::Checkpoint {
                    path: self.path.clone(),
                    msg: format!(
                        "cannot read tensor `{name}` ({e}); the file may be truncated or corrupt"
                    ),
                };
                let t = st
                    .load(name, &Device::Cpu)
                    .and_then(|t| t.to_dtype(DType::F32))
                    .map_err(|e| corrupt(e.to_string()))?;
                if let Some(i) =
                    crate::finite::first_non_finite(&t).map_err(|e| corrupt(e.to_string()))?
                {
                    return Err(MimiError::Checkpoint {
                        path: self.path.clone(),
                        msg: format!(
                            "tensor `{name}` holds a NaN or infinite value (element {i}); the file is corrupt, re-download it"
                        ),
                    });
                }
                t.to_dtype(dtype)?.to_device(&self.device)?
            }
            Source::Made { fill, keep } => {
                let t = Tensor::from_vec(fill(name, shape), shape, &Device::Cpu)?;
                if *keep {
                    self.made.insert(name.to_string(), t.clone());
                }
                t
            }
        };
        Ok(t)
    }
}
