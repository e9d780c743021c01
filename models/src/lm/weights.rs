//! Reading LM weights from safetensors (PyTorch or candle layout) or GGUF, by release name.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::quantized::{QMatMul, QTensor};
use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Module, Tensor};

use super::gguf_read::{self, GgufFile, CONFIG_KEY};
use super::qgemv::QGemv;
use super::LmError;
use crate::finite::{first_non_finite, first_non_finite_block};

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
    Gguf(GgufFile),
    /// No data: requests are only checked and recorded.
    Nothing,
}

/// Named tensor access for the loader, like candle's `VarBuilder`: every request (name and
/// shape) is checked against the file's header and recorded, so the tensor list of a
/// checkpoint, the "unexpected tensor" check and the random-checkpoint writer all come from
/// the loading code. A dry store (no file, or a header only) answers with empty placeholders.
pub(crate) struct Store {
    path: PathBuf,
    source: Source,
    /// Shapes the file's header lists; `None` without a file.
    names: Option<HashMap<String, Vec<usize>>>,
    /// Check and record only; load nothing.
    dry: bool,
    recorded: Vec<(String, Vec<usize>)>,
    seen: HashSet<String>,
    pub(crate) layout: Layout,
    pub(crate) dtype: DType,
    pub(crate) device: Device,
    kind: crate::device::DeviceKind,
    /// Bytes of weights held once loaded (dense at compute dtype, quantized as stored).
    pub(crate) bytes: u64,
    pub(crate) quantized: bool,
}

/// What a checkpoint file holds, from its header.
struct Opened {
    source: Source,
    names: HashMap<String, Vec<usize>>,
}

fn is_gguf(path: &Path) -> Result<bool, LmError> {
    use std::io::Read;
    let io = |error| LmError::Io {
        path: path.to_path_buf(),
        error,
    };
    let mut f = File::open(path).map_err(io)?;
    if !f.metadata().map_err(io)?.is_file() {
        return Err(LmError::Format {
            path: path.to_path_buf(),
            what: "is not a regular file".into(),
        });
    }
    let mut magic = [0u8; 4];
    match f.read_exact(&mut magic) {
        Ok(()) => Ok(&magic == b"GGUF"),
        // Shorter than a magic: not GGUF; the safetensors reader gives the message.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(io(e)),
    }
}

fn open_file(path: &Path) -> Result<Opened, LmError> {
    let bad = |what: String| LmError::Format {
        path: path.to_path_buf(),
        what,
    };
    if is_gguf(path)? {
        let g = GgufFile::open(path).map_err(|e| bad(format!("not a usable GGUF file: {e}")))?;
        let names = g
            .header
            .tensors
            .iter()
            .map(|(k, v)| (k.clone(), v.shape.clone()))
            .collect();
        return Ok(Opened {
            source: Source::Gguf(g),
            names,
        });
    }
    // SAFETY: the file is mapped read-only; moshid replaces files it writes by renaming a
    // new one over them, never in place, and a concurrent truncation by another process is
    // outside what we can defend against.
    let st = unsafe { MmapedSafetensors::new(path) }
        .map_err(|e| bad(format!("not a readable safetensors or GGUF file: {e}")))?;
    let names = st
        .tensors()
        .into_iter()
        .map(|(k, v)| (k, v.shape().to_vec()))
        .collect();
    Ok(Opened {
        source: Source::Safetensors(st),
        names,
    })
}

fn detect_layout(path: &Path, names: &HashMap<String, Vec<usize>>) -> Result<Layout, LmError> {
    if names.contains_key("depformer.0.linear_in.weight") {
        Ok(Layout::Candle)
    } else if names.contains_key("depformer_in.0.weight") {
        Ok(Layout::PyTorch)
    } else {
        Err(LmError::Format {
            path: path.to_path_buf(),
            what: "no Moshi LM depth-transformer weights (neither `depformer.0.linear_in.weight` \
                   of the candle layout nor `depformer_in.0.weight` of the PyTorch layout): is this an LM checkpoint?"
                .into(),
        })
    }
}

impl Store {
    /// Opens `path` (safetensors or GGUF) for loading at `dtype` on `device`.
    pub(crate) fn open(path: &Path, dtype: DType, device: &Device) -> Result<Self, LmError> {
        let o = open_file(path)?;
        let layout = detect_layout(path, &o.names)?;
        Ok(Self::new(
            path,
            o.source,
            Some(o.names),
            false,
            layout,
            dtype,
            device,
        ))
    }

    /// Opens `path`'s header only: requests are checked against it, nothing is loaded.
    pub(crate) fn header_only(path: &Path) -> Result<Self, LmError> {
        let o = open_file(path)?;
        let layout = detect_layout(path, &o.names)?;
        let dev = Device::Cpu;
        Ok(Self::new(
            path,
            Source::Nothing,
            Some(o.names),
            true,
            layout,
            DType::F32,
            &dev,
        ))
    }

    /// No file: records the requests a checkpoint in `layout` must satisfy.
    pub(crate) fn plan(layout: Layout) -> Self {
        let path = Path::new("(planned)");
        Self::new(
            path,
            Source::Nothing,
            None,
            true,
            layout,
            DType::F32,
            &Device::Cpu,
        )
    }

    fn new(
        path: &Path,
        source: Source,
        names: Option<HashMap<String, Vec<usize>>>,
        dry: bool,
        layout: Layout,
        dtype: DType,
        device: &Device,
    ) -> Self {
        Self {
            path: path.to_path_buf(),
            quantized: matches!(source, Source::Gguf(_)),
            source,
            names,
            dry,
            recorded: Vec::new(),
            seen: HashSet::new(),
            layout,
            dtype,
            device: device.clone(),
            kind: crate::device::DeviceKind::of(device),
            bytes: 0,
        }
    }

    /// Checks a request against the header and records it; the name to load it from when it
    /// must be loaded (`None` for a dry store). The PyTorch layout shares tensors between
    /// depth steps, so a name may come again. A depth step 8-15 the file lacks is taken from
    /// step k-8 when that one has the shape asked for (see [`fill_name`]).
    fn request(&mut self, name: &str, shape: &[usize]) -> Result<Option<String>, LmError> {
        self.request_stored(name, shape, shape)
    }

    /// [`Store::request`] of a tensor recorded as `shape` that the file may hold as `stored`.
    fn request_stored(
        &mut self,
        name: &str,
        shape: &[usize],
        stored: &[usize],
    ) -> Result<Option<String>, LmError> {
        let shape_recorded = shape;
        let shape = stored;
        if self.seen.insert(name.to_string()) {
            self.recorded
                .push((name.to_string(), shape_recorded.to_vec()));
        }
        let mut from = name.to_string();
        if let Some(names) = &self.names {
            let filled = fill_name(name).filter(|f| names.get(f).map(Vec::as_slice) == Some(shape));
            match (names.get(name), filled) {
                (None, Some(f)) => from = f,
                (None, None) => {
                    return Err(LmError::MissingTensor {
                        name: name.to_string(),
                        path: self.path.clone(),
                    })
                }
                (Some(got), _) if got.as_slice() != shape => {
                    return Err(LmError::TensorShape {
                        name: name.to_string(),
                        expected: shape.to_vec(),
                        got: got.clone(),
                        path: self.path.clone(),
                    })
                }
                (Some(_), _) => {}
            }
        }
        Ok((!self.dry).then_some(from))
    }

    /// After building: refuses tensors in the file nobody asked for; returns every request
    /// (name, shape) in order.
    pub(crate) fn finish(self) -> Result<Vec<(String, Vec<usize>)>, LmError> {
        if let Some(names) = &self.names {
            let mut extra: Vec<&String> =
                names.keys().filter(|n| !self.seen.contains(*n)).collect();
            extra.sort();
            if let Some(name) = extra.first() {
                return Err(LmError::UnexpectedTensor {
                    name: (*name).clone(),
                    path: self.path.clone(),
                });
            }
        }
        Ok(self.recorded)
    }

    /// The empty tensor a dry store answers with.
    fn placeholder(&self) -> Result<Tensor, LmError> {
        Tensor::zeros(0, self.dtype, &Device::Cpu).map_err(|e| LmError::Candle(e.to_string()))
    }

    fn placeholder_linear(&self) -> Result<AnyLinear, LmError> {
        Ok(AnyLinear::Candle(Linear {
            w: QMatMul::Tensor(self.placeholder()?),
            quantized: false,
        }))
    }

    fn corrupt(&self, name: &str, at: usize) -> LmError {
        LmError::Format {
            path: self.path.clone(),
            what: format!(
                "tensor `{name}` holds a NaN or infinite value (element or block {at}): the file is corrupt, re-download it"
            ),
        }
    }

    fn candle(&self, name: &str, e: candle_core::Error) -> LmError {
        LmError::Candle(format!(
            "loading `{name}` from {}: {e}",
            self.path.display()
        ))
    }

    /// Raw tensor from safetensors (as stored) or a quantized tensor from GGUF, checked for
    /// NaN and infinities while it is in CPU memory. Only called when not dry.
    fn raw(&mut self, name: &str) -> Result<Raw, LmError> {
        let device = self.device.clone();
        match &mut self.source {
            Source::Safetensors(st) => {
                // Read on the host; a cast the device has no kernel for (bf16 on a GPU below
                // sm_80) happens here, before the copy.
                let (kind, dtype) = (self.kind, self.dtype);
                let t = st
                    .load(name, &Device::Cpu)
                    .and_then(|t| {
                        if kind.convert_on_host(t.dtype(), dtype) {
                            t.to_dtype(dtype)
                        } else {
                            Ok(t)
                        }
                    })
                    .map_err(|e| self.candle(name, e))?;
                if let Some(i) = first_non_finite(&t).map_err(|e| self.candle(name, e))? {
                    return Err(self.corrupt(name, i));
                }
                let t = t.to_device(&device).map_err(|e| self.candle(name, e))?;
                Ok(Raw::Dense(t))
            }
            Source::Gguf(g) => {
                let (info, data) = g.bytes(name).map_err(|what| LmError::Format {
                    path: self.path.clone(),
                    what,
                })?;
                if let Some(i) = first_non_finite_block(info.ty, &data) {
                    return Err(self.corrupt(name, i));
                }
                let q = gguf_read::qtensor(&info, &data, &device);
                q.map(Raw::Quant).map_err(|e| self.candle(name, e))
            }
            Source::Nothing => Err(LmError::Candle(format!(
                "internal: tensor `{name}` loaded from a dry store"
            ))),
        }
    }

    /// A dense tensor in the compute dtype (norm gains, or a slice source).
    pub(crate) fn dense(&mut self, name: &str, shape: &[usize]) -> Result<Tensor, LmError> {
        let Some(from) = self.request(name, shape)? else {
            return self.placeholder();
        };
        let t = match self.raw(&from)? {
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
        let Some(from) = self.request(name, &[out, inp])? else {
            return self.placeholder_linear();
        };
        let raw = self.raw(&from)?;
        self.any_linear(name, raw, out, inp)
    }

    /// The `steps` row blocks of a `[steps * out, inp]` weight as one linear each (the
    /// PyTorch layout's concatenated per-step projections), read once.
    pub(crate) fn linear_steps(
        &mut self,
        name: &str,
        steps: usize,
        out: usize,
        inp: usize,
    ) -> Result<Vec<AnyLinear>, LmError> {
        // A Moshi (8-step) weight asked for 16 steps: steps 8-15 reuse 0-7, as NVIDIA's loader
        // concatenates the tensor with itself.
        let stored = match self.names.as_ref().and_then(|n| n.get(name)) {
            Some(s) if steps == 16 && s.as_slice() == [8 * out, inp] => 8,
            _ => steps,
        };
        let Some(from) = self.request_stored(name, &[steps * out, inp], &[stored * out, inp])?
        else {
            return (0..steps).map(|_| self.placeholder_linear()).collect();
        };
        let raw = self.raw(&from)?;
        let mut v = Vec::with_capacity(steps);
        for step in (0..steps).map(|s| s % stored) {
            let part = match &raw {
                Raw::Dense(t) => Raw::Dense(
                    t.narrow(0, step * out, out)
                        .and_then(|t| t.contiguous())
                        .map_err(|e| self.candle(name, e))?,
                ),
                Raw::Quant(q) => Raw::Quant(self.quant_rows(name, q, step, out, inp)?),
            };
            v.push(self.any_linear(name, part, out, inp)?);
        }
        Ok(v)
    }

    /// Rows `[step * out, (step + 1) * out)` of a quantized `[_, inp]` weight.
    fn quant_rows(
        &self,
        name: &str,
        q: &QTensor,
        step: usize,
        out: usize,
        inp: usize,
    ) -> Result<QTensor, LmError> {
        // Each row is a whole number of GGML blocks (the header check), so a row range is a
        // byte range.
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
        QTensor::new(storage, (out, inp)).map_err(|e| self.candle(name, e))
    }

    /// An embedding table `[rows, dim]`.
    pub(crate) fn embedding(
        &mut self,
        name: &str,
        rows: usize,
        dim: usize,
    ) -> Result<Embedding, LmError> {
        let Some(from) = self.request(name, &[rows, dim])? else {
            let w = QMatMul::Tensor(self.placeholder()?);
            let dtype = self.dtype;
            return Ok(Embedding { w, dtype });
        };
        let raw = self.raw(&from)?;
        let (w, _) = self.wrap_q(name, raw)?;
        Ok(Embedding {
            w,
            dtype: self.dtype,
        })
    }

    /// An RMSNorm gain stored as `[1, 1, dim]`, returned as `[dim]`.
    pub(crate) fn norm(&mut self, name: &str, dim: usize) -> Result<Tensor, LmError> {
        // GGUF files may store it flattened; accept both.
        let shape: Vec<usize> = match self.names.as_ref().and_then(|n| n.get(name)) {
            Some(s) if s.as_slice() == [dim] => vec![dim],
            _ => vec![1, 1, dim],
        };
        let t = self.dense(name, &shape)?;
        if self.dry {
            return Ok(t);
        }
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

/// Where NVIDIA's PersonaPlex loader takes a depth step 8-15 a checkpoint lacks from: step
/// k-8 of the same group (`gating`, `linears`, `depformer_in`, `depformer_emb`; in the candle
/// layout the whole `depformer.{k}` module). `None` for other names.
fn fill_name(name: &str) -> Option<String> {
    for group in [
        "gating.",
        "linears.",
        "depformer_in.",
        "depformer_emb.",
        "depformer.",
    ] {
        let mut from = 0;
        while let Some(at) = name[from..].find(group).map(|i| from + i) {
            let rest = &name[at + group.len()..];
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            if let Ok(k @ 8..=15) = rest[..digits].parse::<usize>() {
                if rest[digits..].starts_with('.') && (at == 0 || name[..at].ends_with('.')) {
                    let head = &name[..at + group.len()];
                    return Some(format!("{head}{}{}", k - 8, &rest[digits..]));
                }
            }
            from = at + group.len();
        }
    }
    None
}

/// Whether the checkpoint `path` holds depth step `k` (a PersonaPlex file has steps 8-15).
pub(crate) fn has_depth_step(path: &Path, k: usize) -> Result<bool, LmError> {
    let o = open_file(path)?;
    Ok(o.names.contains_key(&format!("depformer_in.{k}.weight"))
        || o.names
            .contains_key(&format!("depformer.{k}.linear_in.weight")))
}

/// Bytes the weights of `path` will take once loaded at `dtype` (headers only).
pub(crate) fn stored_weight_bytes(path: &Path, dtype: DType) -> Result<u64, LmError> {
    use candle_core::quantized::GgmlDType;
    let o = open_file(path)?;
    let dense = |shape: &[usize]| {
        (shape.iter().product::<usize>() as u64).saturating_mul(dtype.size_in_bytes() as u64)
    };
    Ok(match &o.source {
        Source::Gguf(g) => g
            .header
            .tensors
            .values()
            .map(|t| match t.ty {
                GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16 => dense(&t.shape),
                _ => t.len,
            })
            .fold(0u64, u64::saturating_add),
        // The safetensors reader has checked that every tensor's bytes are in the file, so
        // these products do not overflow.
        _ => o
            .names
            .values()
            .map(|s| dense(s))
            .fold(0u64, u64::saturating_add),
    })
}

/// The `lm_kwargs` JSON stored in `path`'s metadata (GGUF files moshid writes), if any.
pub(crate) fn stored_config(path: &Path) -> Result<Option<String>, LmError> {
    if !is_gguf(path)? {
        return Ok(None);
    }
    let g = GgufFile::open(path).map_err(|e| LmError::Format {
        path: path.to_path_buf(),
        what: format!("not a usable GGUF file: {e}"),
    })?;
    Ok(g.header.strings.get(CONFIG_KEY).cloned())
}

#[cfg(test)]
mod tests {
    use super::fill_name;

    #[test]
    fn fills_steps_8_to_15_from_0_to_7() {
        let f = |n: &str| fill_name(n);
        assert_eq!(f("linears.9.weight").as_deref(), Some("linears.1.weight"));
        assert_eq!(
            f("depformer_in.15.weight").as_deref(),
            Some("depformer_in.7.weight")
        );
        assert_eq!(
            f("depformer_emb.8.weight").as_deref(),
            Some("depformer_emb.0.weight")
        );
        assert_eq!(
            f("depformer.layers.3.gating.12.linear_in.weight").as_deref(),
            Some("depformer.layers.3.gating.4.linear_in.weight")
        );
        assert_eq!(
            f("depformer.10.transformer.layers.0.norm1.alpha").as_deref(),
            Some("depformer.2.transformer.layers.0.norm1.alpha")
        );
        assert_eq!(f("depformer_emb.7.weight"), None);
        assert_eq!(f("linears.3.weight"), None);
        assert_eq!(f("transformer.layers.9.gating.linear_in.weight"), None);
    }
}
