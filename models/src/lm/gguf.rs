//! Writing GGUF files tensor by tensor (a 7B never has to sit in memory whole), and
//! quantizing safetensors checkpoints into them.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};

use super::gguf_read::CONFIG_KEY;
use super::weights::Store;
use super::{LmConfig, LmError, LmModel};
use crate::replace::replace_file;

const ALIGN: u64 = 32;

/// Target quantization of `moshid quantize`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuantType {
    /// 8-bit blocks of 32 (the official `model.q8.gguf` format).
    Q8_0,
    /// 4-bit blocks of 32.
    Q4_0,
    /// 4-bit k-quant super-blocks of 256.
    Q4K,
}

impl std::str::FromStr for QuantType {
    type Err = LmError;
    fn from_str(s: &str) -> Result<Self, LmError> {
        match s.to_ascii_lowercase().as_str() {
            "q8_0" | "q8" => Ok(Self::Q8_0),
            "q4_0" => Ok(Self::Q4_0),
            "q4k" | "q4_k" => Ok(Self::Q4K),
            other => Err(LmError::Config(format!(
                "unknown quantization `{other}`: use q8_0, q4_0 or q4k"
            ))),
        }
    }
}

impl QuantType {
    fn ggml(self) -> GgmlDType {
        match self {
            Self::Q8_0 => GgmlDType::Q8_0,
            Self::Q4_0 => GgmlDType::Q4_0,
            Self::Q4K => GgmlDType::Q4K,
        }
    }

    /// The GGML type a tensor of `shape` gets: the requested one for 2-D weights whose rows
    /// are whole blocks, a 32-block type of the same width when they are not (q4k needs rows
    /// of 256), f32 for norms and anything else.
    pub(crate) fn for_shape(self, shape: &[usize]) -> GgmlDType {
        if shape.len() != 2 {
            return GgmlDType::F32;
        }
        let cols = shape[1];
        let want = self.ggml();
        if cols.is_multiple_of(want.block_size()) {
            return want;
        }
        let fallback = if self == Self::Q8_0 {
            GgmlDType::Q8_0
        } else {
            GgmlDType::Q4_0
        };
        if cols.is_multiple_of(fallback.block_size()) {
            fallback
        } else {
            GgmlDType::F32
        }
    }
}

fn type_id(t: GgmlDType) -> u32 {
    match t {
        GgmlDType::F32 => 0,
        GgmlDType::F16 => 1,
        GgmlDType::Q4_0 => 2,
        GgmlDType::Q8_0 => 8,
        GgmlDType::Q4K => 12,
        _ => 0,
    }
}

fn nbytes(t: GgmlDType, shape: &[usize]) -> u64 {
    let n: usize = shape.iter().product();
    (n / t.block_size() * t.type_size()) as u64
}

fn write_str<W: Write>(w: &mut W, s: &str) -> std::io::Result<()> {
    w.write_all(&(s.len() as u64).to_le_bytes())?;
    w.write_all(s.as_bytes())
}

/// The GGUF header: metadata (architecture, and `cfg` as the `lm_kwargs` JSON so the file
/// can be loaded without a side JSON), then the tensor table.
fn header(cfg: &LmConfig, entries: &[(String, Vec<usize>, GgmlDType)]) -> Result<Vec<u8>, String> {
    let json = serde_json::to_string(cfg).map_err(|e| e.to_string())?;
    let w = |head: &mut Vec<u8>, s: &str| write_str(head, s).map_err(|e| e.to_string());
    let mut head = Vec::new();
    head.extend_from_slice(b"GGUF");
    head.extend_from_slice(&3u32.to_le_bytes());
    head.extend_from_slice(&(entries.len() as u64).to_le_bytes());
    head.extend_from_slice(&2u64.to_le_bytes());
    for (key, value) in [
        ("general.architecture", "moshi"),
        (CONFIG_KEY, json.as_str()),
    ] {
        w(&mut head, key)?;
        head.extend_from_slice(&8u32.to_le_bytes()); // string
        w(&mut head, value)?;
    }
    let mut offset = 0u64;
    for (name, shape, t) in entries {
        w(&mut head, name)?;
        head.extend_from_slice(&(shape.len() as u32).to_le_bytes());
        for &d in shape.iter().rev() {
            head.extend_from_slice(&(d as u64).to_le_bytes());
        }
        head.extend_from_slice(&type_id(*t).to_le_bytes());
        head.extend_from_slice(&offset.to_le_bytes());
        offset += nbytes(*t, shape).div_ceil(ALIGN) * ALIGN;
    }
    let pad = (head.len() as u64).div_ceil(ALIGN) * ALIGN - head.len() as u64;
    head.extend(std::iter::repeat_n(0u8, pad as usize));
    Ok(head)
}

/// Writes a GGUF v3 file for `cfg`: `entries` (name, shape, type) in order, the bytes of
/// entry `i` coming from `data(i)` when it is its turn. The file appears under `path` only
/// once complete (written beside it and renamed).
pub(crate) fn write_gguf(
    path: &Path,
    cfg: &LmConfig,
    entries: &[(String, Vec<usize>, GgmlDType)],
    data: impl FnMut(usize) -> Result<Vec<u8>, LmError>,
) -> Result<(), LmError> {
    let head = header(cfg, entries).map_err(|what| LmError::Format {
        path: path.to_path_buf(),
        what,
    })?;
    let io = |p: &Path, error| LmError::Io {
        path: p.to_path_buf(),
        error,
    };
    replace_file(path, |tmp| write_body(tmp, &head, entries, data), io)
}

fn write_body(
    path: &Path,
    head: &[u8],
    entries: &[(String, Vec<usize>, GgmlDType)],
    mut data: impl FnMut(usize) -> Result<Vec<u8>, LmError>,
) -> Result<(), LmError> {
    let io = |error| LmError::Io {
        path: path.to_path_buf(),
        error,
    };
    let mut w = BufWriter::with_capacity(1 << 20, File::create(path).map_err(io)?);
    w.write_all(head).map_err(io)?;
    for (i, (name, shape, t)) in entries.iter().enumerate() {
        let bytes = data(i)?;
        if bytes.len() as u64 != nbytes(*t, shape) {
            return Err(LmError::Format {
                path: path.to_path_buf(),
                what: format!(
                    "internal: tensor `{name}` produced {} bytes, expected {}",
                    bytes.len(),
                    nbytes(*t, shape)
                ),
            });
        }
        w.write_all(&bytes).map_err(io)?;
        let pad = (bytes.len() as u64).div_ceil(ALIGN) * ALIGN - bytes.len() as u64;
        w.write_all(&vec![0u8; pad as usize]).map_err(io)?;
    }
    w.flush().map_err(io)?;
    Ok(())
}

/// Encodes an f32 tensor in GGML type `t`.
pub(crate) fn encode(t: &Tensor, ty: GgmlDType) -> candle_core::Result<Vec<u8>> {
    let t = t.to_dtype(DType::F32)?;
    if ty == GgmlDType::F32 {
        let v = t.flatten_all()?.to_vec1::<f32>()?;
        return Ok(v.iter().flat_map(|x| x.to_le_bytes()).collect());
    }
    Ok(QTensor::quantize(&t, ty)?.data()?.into_owned())
}

/// What `quantize_file` did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QuantReport {
    /// Tensors written in the requested type.
    pub quantized: usize,
    /// 2-D tensors written in a fallback block type (rows not a multiple of the block).
    pub fallback: usize,
    /// Tensors kept in f32 (norms).
    pub f32: usize,
    /// Output size in bytes.
    pub bytes: u64,
}

/// Refuses an output that is the input (same file, whatever the path says): the result
/// would replace the only copy of the checkpoint.
fn check_distinct(input: &Path, output: &Path) -> Result<(), LmError> {
    use std::os::unix::fs::MetadataExt;
    let (Ok(a), Ok(b)) = (std::fs::metadata(input), std::fs::metadata(output)) else {
        return Ok(());
    };
    if a.dev() == b.dev() && a.ino() == b.ino() {
        return Err(LmError::Config(format!(
            "the output {} is the input file: give another --out (the input is kept as it is)",
            output.display()
        )));
    }
    Ok(())
}

/// Converts a safetensors checkpoint of `cfg` (either layout, f32/bf16/f16) into GGUF,
/// keeping names, with `cfg` in the metadata; 2-D weights get `ty`, norms stay f32. The
/// input must be exactly an LM checkpoint of `cfg` (checked from its header first, as the
/// loader would). Works tensor by tensor.
pub fn quantize_file(
    input: &Path,
    output: &Path,
    ty: QuantType,
    cfg: &LmConfig,
) -> Result<QuantReport, LmError> {
    cfg.validate()?;
    check_distinct(input, output)?;
    let mut check = Store::header_only(input)?;
    LmModel::build(&mut check, cfg)?;
    check.finish()?;
    // SAFETY: read-only mapping of a file we do not modify (the output is another file,
    // written beside its final name and renamed).
    let st = unsafe { MmapedSafetensors::new(input) }.map_err(|e| LmError::Format {
        path: input.to_path_buf(),
        what: format!("not a readable safetensors file: {e}"),
    })?;
    let mut names: Vec<(String, Vec<usize>)> = st
        .tensors()
        .into_iter()
        .map(|(k, v)| (k, v.shape().to_vec()))
        .collect();
    names.sort();
    let mut report = QuantReport::default();
    let entries: Vec<(String, Vec<usize>, GgmlDType)> = names
        .into_iter()
        .map(|(n, s)| {
            let t = ty.for_shape(&s);
            if t == ty.ggml() {
                report.quantized += 1;
            } else if t == GgmlDType::F32 {
                report.f32 += 1;
            } else {
                report.fallback += 1;
            }
            (n, s, t)
        })
        .collect();
    write_gguf(output, cfg, &entries, |i| {
        let (name, _, t) = &entries[i];
        let e = |e: candle_core::Error| LmError::Candle(format!("quantizing `{name}`: {e}"));
        let x = st.load(name, &Device::Cpu).map_err(e)?;
        if let Some(at) = crate::finite::first_non_finite(&x).map_err(e)? {
            return Err(LmError::Format {
                path: input.to_path_buf(),
                what: format!("tensor `{name}` holds a NaN or infinite value (element {at}): the file is corrupt"),
            });
        }
        encode(&x, *t).map_err(e)
    })?;
    report.bytes = std::fs::metadata(output)
        .map_err(|error| LmError::Io {
            path: output.to_path_buf(),
            error,
        })?
        .len();
    Ok(report)
}
