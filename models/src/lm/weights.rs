//! Reading LM weights from safetensors (PyTorch or candle layout) or GGUF, by release name.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::quantized::{gguf_file, QMatMul, QTensor};
use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Module, Tensor};

use super::qgemv::QGemv;
use super::LmError;

/// How a checkpoint names the depth transformer's per-step weights (SPEC.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// PyTorch 0.1 release names: `depformer_in.{k}`, `linears.{k}`, steps concatenated in
    /// `depformer.layers.{l}.self_attn.in_proj_weight`.
    PyTorch,
    /// Candle release names: one module per step, `depformer.{k}.…`.
    Candle,
}

/// A linear layer without bias: dense (compute dtype) or quantized (GGML block format).
#[derive(Debug, Clone)]
pub(crate) struct Linear {
    w: QMatMul,
    quantized: bool,
}

/// A linear layer: candle's (dense, or quantized on any device) or, for q8_0/q4_0 on an
/// AVX2 CPU, [`QGemv`], which reads the weights several times faster at m = 1.
#[derive(Debug, Clone)]
pub(crate) enum AnyLinear {
    Candle(Linear),
    Cpu(QGemv),
}

impl AnyLinear {
    pub(crate) fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Self::Candle(l) => l.forward(x),
            Self::Cpu(g) => g.forward(x),
        }
    }
}

impl Linear {
    pub(crate) fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        if self.quantized && x.dtype() != DType::F32 {
            // GGML kernels take f32 activations.
            let dt = x.dtype();
            return self.w.forward(&x.to_dtype(DType::F32)?)?.to_dtype(dt);
        }
        self.w.forward(x)
    }
}

/// An embedding table, dense or quantized (rows dequantized on lookup).
#[derive(Debug, Clone)]
pub(crate) struct Embedding {
    w: QMatMul,
    dtype: DType,
}

impl Embedding {
    pub(crate) fn lookup(&self, ids: &Tensor) -> candle_core::Result<Tensor> {
        self.w.embedding(ids)?.to_dtype(self.dtype)
    }
}

enum Source {
    Safetensors(MmapedSafetensors),
    Gguf {
        content: gguf_file::Content,
        file: File,
    },
}

/// Named tensor access over one checkpoint file, with shape checks and byte accounting.
pub(crate) struct Store {
    path: PathBuf,
    source: Source,
    names: HashMap<String, Vec<usize>>,
    pub(crate) layout: Layout,
    pub(crate) dtype: DType,
    pub(crate) device: Device,
    /// Bytes of weights held once loaded (dense at compute dtype, quantized as stored).
    pub(crate) bytes: u64,
    pub(crate) quantized: bool,
}

impl Store {
    pub(crate) fn open(path: &Path, dtype: DType, device: &Device) -> Result<Self, LmError> {
        let io = |source| LmError::Io {
            path: path.to_path_buf(),
            source,
        };
        let bad = |what: String| LmError::Format {
            path: path.to_path_buf(),
            what,
        };
        let is_gguf = {
            use std::io::Read;
            let mut magic = [0u8; 4];
            let mut f = File::open(path).map_err(io)?;
            f.read_exact(&mut magic).map_err(io)?;
            &magic == b"GGUF"
        };
        let (source, names) = if is_gguf {
            let mut file = File::open(path).map_err(io)?;
            let content = gguf_file::Content::read(&mut file)
                .map_err(|e| bad(format!("not a readable GGUF file: {e}")))?;
            let names: HashMap<String, Vec<usize>> = content
                .tensor_infos
                .iter()
                .map(|(k, v)| (k.clone(), v.shape.dims().to_vec()))
                .collect();
            (Source::Gguf { content, file }, names)
        } else {
            // SAFETY: the file is mapped read-only; moshid does not modify checkpoints while
            // running, and a concurrent truncation is outside what we can defend against.
            let st = unsafe { MmapedSafetensors::new(path) }
                .map_err(|e| bad(format!("not a readable safetensors or GGUF file: {e}")))?;
            let names: HashMap<String, Vec<usize>> = st
                .tensors()
                .into_iter()
                .map(|(k, v)| (k, v.shape().to_vec()))
                .collect();
            (Source::Safetensors(st), names)
        };
        let layout = if names.contains_key("depformer.0.linear_in.weight") {
            Layout::Candle
        } else if names.contains_key("depformer_in.0.weight") {
            Layout::PyTorch
        } else {
            return Err(bad(
                "no Moshi LM depth-transformer weights (neither `depformer.0.linear_in.weight` \
                 of the candle layout nor `depformer_in.0.weight` of the PyTorch layout): is this an LM checkpoint?"
                    .into(),
            ));
        };
        Ok(Self {
            path: path.to_path_buf(),
            quantized: matches!(source, Source::Gguf { .. }),
            source,
            names,
            layout,
            dtype,
            device: device.clone(),
            bytes: 0,
        })
    }

    fn check(&self, name: &str, shape: &[usize]) -> Result<(), LmError> {
        match self.names.get(name) {
            None => Err(LmError::MissingTensor {
                name: name.to_string(),
                path: self.path.clone(),
            }),
            Some(got) if got.as_slice() != shape => Err(LmError::TensorShape {
                name: name.to_string(),
                expected: shape.to_vec(),
                got: got.clone(),
                path: self.path.clone(),
            }),
            Some(_) => Ok(()),
        }
    }

    fn candle(&self, name: &str, e: candle_core::Error) -> LmError {
        LmError::Candle(format!(
            "loading `{name}` from {}: {e}",
            self.path.display()
        ))
    }

    /// Raw tensor from safetensors (as stored) or a quantized tensor from GGUF.
    fn raw(&mut self, name: &str, shape: &[usize]) -> Result<Raw, LmError> {
        self.check(name, shape)?;
        match &mut self.source {
            Source::Safetensors(st) => {
                let t = st
                    .load(name, &self.device)
                    .map_err(|e| self.candle(name, e))?;
                Ok(Raw::Dense(t))
            }
            Source::Gguf { content, file } => {
                let q = content.tensor(file, name, &self.device);
                q.map(Raw::Quant).map_err(|e| self.candle(name, e))
            }
        }
    }

    /// A dense tensor in the compute dtype (norm gains, or a slice source).
    pub(crate) fn dense(&mut self, name: &str, shape: &[usize]) -> Result<Tensor, LmError> {
        let t = match self.raw(name, shape)? {
            Raw::Dense(t) => t,
            Raw::Quant(q) => q
                .dequantize(&self.device)
                .map_err(|e| self.candle(name, e))?,
        };
        let t = t.to_dtype(self.dtype).map_err(|e| self.candle(name, e))?;
        self.bytes += (t.elem_count() * self.dtype.size_in_bytes()) as u64;
        Ok(t)
    }

    fn wrap_q(&mut self, name: &str, raw: Raw) -> Result<(QMatMul, bool), LmError> {
        match raw {
            Raw::Dense(t) => {
                let t = t.to_dtype(self.dtype).map_err(|e| self.candle(name, e))?;
                self.bytes += (t.elem_count() * self.dtype.size_in_bytes()) as u64;
                Ok((QMatMul::Tensor(t), false))
            }
            Raw::Quant(q) => {
                let quant = !matches!(
                    q.dtype(),
                    candle_core::quantized::GgmlDType::F32
                        | candle_core::quantized::GgmlDType::F16
                        | candle_core::quantized::GgmlDType::BF16
                );
                if quant {
                    self.bytes += q.storage_size_in_bytes() as u64;
                    let m = QMatMul::from_arc(Arc::new(q)).map_err(|e| self.candle(name, e))?;
                    Ok((m, true))
                } else {
                    let t = q
                        .dequantize(&self.device)
                        .and_then(|t| t.to_dtype(self.dtype))
                        .map_err(|e| self.candle(name, e))?;
                    self.bytes += (t.elem_count() * self.dtype.size_in_bytes()) as u64;
                    Ok((QMatMul::Tensor(t), false))
                }
            }
        }
    }

    /// A linear layer over `raw` (`[out, inp]`): the CPU kernel where it applies.
    fn any_linear(
        &mut self,
        name: &str,
        raw: Raw,
        out: usize,
        inp: usize,
    ) -> Result<AnyLinear, LmError> {
        if let Raw::Quant(q) = &raw {
            if self.device.is_cpu() {
                let data = q.data().map_err(|e| self.candle(name, e))?;
                if let Some(g) = QGemv::new(q.dtype(), out, inp, &data) {
                    self.bytes += g.bytes() as u64;
                    return Ok(AnyLinear::Cpu(g));
                }
            }
        }
        let (w, quantized) = self.wrap_q(name, raw)?;
        Ok(AnyLinear::Candle(Linear { w, quantized }))
    }

    /// A `[out, inp]` linear weight.
    pub(crate) fn linear(
        &mut self,
        name: &str,
        out: usize,
        inp: usize,
    ) -> Result<AnyLinear, LmError> {
        let raw = self.raw(name, &[out, inp])?;
        self.any_linear(name, raw, out, inp)
    }

    /// Rows `[step * out, (step + 1) * out)` of a `[steps * out, inp]` weight (PyTorch layout's
    /// concatenated per-step projections).
    pub(crate) fn linear_rows(
        &mut self,
        name: &str,
        steps: usize,
        step: usize,
        out: usize,
        inp: usize,
    ) -> Result<AnyLinear, LmError> {
        let raw = self.raw(name, &[steps * out, inp])?;
        let t = match raw {
            Raw::Dense(t) => t,
            Raw::Quant(q) => {
                // Each row is a whole number of GGML blocks, so a row range is a byte range.
                let dt = q.dtype();
                let row_bytes = inp / dt.block_size() * dt.type_size();
                let data = q.data().map_err(|e| self.candle(name, e))?;
                let part = data[step * out * row_bytes..(step + 1) * out * row_bytes].to_vec();
                let storage = candle_core::quantized::QStorage::from_data(
                    std::borrow::Cow::Owned(part),
                    &self.device,
                    dt,
                )
                .map_err(|e| self.candle(name, e))?;
                let q = QTensor::new(storage, (out, inp)).map_err(|e| self.candle(name, e))?;
                return self.any_linear(name, Raw::Quant(q), out, inp);
            }
        };
        let t = t
            .narrow(0, step * out, out)
            .and_then(|t| t.contiguous())
            .map_err(|e| self.candle(name, e))?;
        self.any_linear(name, Raw::Dense(t), out, inp)
    }

    /// An embedding table `[rows, dim]`.
    pub(crate) fn embedding(
        &mut self,
        name: &str,
        rows: usize,
        dim: usize,
    ) -> Result<Embedding, LmError> {
        let raw = self.raw(name, &[rows, dim])?;
        let (w, _) = self.wrap_q(name, raw)?;
        Ok(Embedding {
            w,
            dtype: self.dtype,
        })
    }

    /// An RMSNorm gain stored as `[1, 1, dim]`, returned as `[dim]`.
    pub(crate) fn norm(&mut self, name: &str, dim: usize) -> Result<Tensor, LmError> {
        // GGUF files may store it flattened; accept both.
        let shape: Vec<usize> = match self.names.get(name) {
            Some(s) if s.as_slice() == [dim] => vec![dim],
            _ => vec![1, 1, dim],
        };
        let t = self.dense(name, &shape)?;
        // Norms run in f32 whatever the compute dtype (the reference's rms_norm_f32).
        t.reshape(dim)
            .and_then(|t| t.to_dtype(DType::F32))
            .map_err(|e| self.candle(name, e))
    }
}

enum Raw {
    Dense(Tensor),
    Quant(QTensor),
}

/// Bytes the weights of `path` will take once loaded at `dtype` (headers only).
pub(crate) fn stored_weight_bytes(path: &Path, dtype: DType) -> Result<u64, LmError> {
    use candle_core::quantized::GgmlDType;
    let io = |source| LmError::Io {
        path: path.to_path_buf(),
        source,
    };
    let bad = |what: String| LmError::Format {
        path: path.to_path_buf(),
        what,
    };
    let mut f = File::open(path).map_err(io)?;
    let mut magic = [0u8; 4];
    {
        use std::io::Read;
        f.read_exact(&mut magic).map_err(io)?;
    }
    if &magic == b"GGUF" {
        let mut f = File::open(path).map_err(io)?;
        let content = gguf_file::Content::read(&mut f)
            .map_err(|e| bad(format!("not a readable GGUF file: {e}")))?;
        Ok(content
            .tensor_infos
            .values()
            .map(|t| {
                let n = t.shape.elem_count();
                match t.ggml_dtype {
                    GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16 => {
                        (n * dtype.size_in_bytes()) as u64
                    }
                    q => (n / q.block_size() * q.type_size()) as u64,
                }
            })
            .sum())
    } else {
        // SAFETY: read-only mapping used only to read the header.
        let st = unsafe { MmapedSafetensors::new(path) }
            .map_err(|e| bad(format!("not a readable safetensors or GGUF file: {e}")))?;
        Ok(st
            .tensors()
            .iter()
            .map(|(_, v)| (v.shape().iter().product::<usize>() * dtype.size_in_bytes()) as u64)
            .sum())
    }
}
