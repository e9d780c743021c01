//! Reading GGUF files: the header and tensor table, checked before any tensor is trusted.
//!
//! candle's parser accepts tensors whose byte ranges overlap, are misaligned or run past the
//! file, and divides by a zero `general.alignment`; this reader refuses all of those with a
//! message, so a hostile or damaged file is one error line. It also reads the LM
//! configuration moshid stores in the files it writes ([`CONFIG_KEY`]).

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::Device;

/// Metadata key holding the LM configuration (the `lm_kwargs` JSON) in files moshid writes.
pub(crate) const CONFIG_KEY: &str = "moshid.lm_config";
/// Alignment of tensor data when `general.alignment` is absent (GGUF spec).
const DEFAULT_ALIGNMENT: u64 = 32;
/// Nesting depth of metadata arrays accepted (real files use 1).
const MAX_DEPTH: usize = 4;

/// One tensor of the table: where its bytes are and what they hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct GgufTensor {
    /// GGML type.
    pub(crate) ty: GgmlDType,
    /// Shape, outermost dimension first (candle's order).
    pub(crate) shape: Vec<usize>,
    /// Absolute file offset of the first byte.
    pub(crate) start: u64,
    /// Length in bytes.
    pub(crate) len: u64,
}

/// A checked GGUF header.
#[derive(Debug, Clone, Default)]
pub(crate) struct GgufHeader {
    /// Tensors by name.
    pub(crate) tensors: HashMap<String, GgufTensor>,
    /// String-valued metadata (other value types are skipped).
    pub(crate) strings: HashMap<String, String>,
}

/// Counts bytes read so every length can be checked against what the file still holds.
struct Input<R> {
    r: R,
    pos: u64,
    len: u64,
}

impl<R: Read> Input<R> {
    fn bytes<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let mut b = [0u8; N];
        self.r
            .read_exact(&mut b)
            .map_err(|_| format!("header truncated at byte {}", self.pos))?;
        self.pos += N as u64;
        Ok(b)
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.bytes()?))
    }
    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.bytes()?))
    }
    fn left(&self) -> u64 {
        self.len.saturating_sub(self.pos)
    }
    /// `n` items of at least `each` bytes must fit in what is left.
    fn fits(&self, n: u64, each: u64, what: &str) -> Result<(), String> {
        if n.saturating_mul(each) > self.left() {
            return Err(format!(
                "{what} count {n} at byte {} does not fit in the file",
                self.pos
            ));
        }
        Ok(())
    }
    fn skip(&mut self, n: u64) -> Result<(), String> {
        self.fits(n, 1, "byte")?;
        let copied = std::io::copy(&mut (&mut self.r).take(n), &mut std::io::sink())
            .map_err(|e| e.to_string())?;
        if copied != n {
            return Err(format!("header truncated at byte {}", self.pos + copied));
        }
        self.pos += n;
        Ok(())
    }
    fn string(&mut self) -> Result<String, String> {
        let n = self.u64()?;
        self.fits(n, 1, "string length")?;
        let mut v = vec![0u8; n as usize];
        self.r
            .read_exact(&mut v)
            .map_err(|_| format!("header truncated at byte {}", self.pos))?;
        self.pos += n;
        String::from_utf8(v).map_err(|_| format!("string before byte {} is not UTF-8", self.pos))
    }
}

/// GGML type of a GGUF type id.
fn ggml_type(id: u32) -> Option<GgmlDType> {
    Some(match id {
        0 => GgmlDType::F32,
        1 => GgmlDType::F16,
        2 => GgmlDType::Q4_0,
        3 => GgmlDType::Q4_1,
        6 => GgmlDType::Q5_0,
        7 => GgmlDType::Q5_1,
        8 => GgmlDType::Q8_0,
        9 => GgmlDType::Q8_1,
        10 => GgmlDType::Q2K,
        11 => GgmlDType::Q3K,
        12 => GgmlDType::Q4K,
        13 => GgmlDType::Q5K,
        14 => GgmlDType::Q6K,
        15 => GgmlDType::Q8K,
        30 => GgmlDType::BF16,
        _ => return None,
    })
}

/// A metadata value: strings and integers are kept, the rest skipped.
enum Value {
    Str(String),
    Int(u64),
    Other,
}

fn read_value<R: Read>(inp: &mut Input<R>, ty: u32, depth: usize) -> Result<Value, String> {
    let fixed = |ty: u32| -> Option<u64> {
        Some(match ty {
            0 | 1 | 7 => 1,
            2 | 3 => 2,
            4..=6 => 4,
            10..=12 => 8,
            _ => return None,
        })
    };
    match ty {
        8 => Ok(Value::Str(inp.string()?)),
        4 => Ok(Value::Int(inp.u32()? as u64)),
        10 => Ok(Value::Int(inp.u64()?)),
        9 => {
            if depth >= MAX_DEPTH {
                return Err(format!("metadata arrays nested deeper than {MAX_DEPTH}"));
            }
            let inner = inp.u32()?;
            let n = inp.u64()?;
            match fixed(inner) {
                Some(size) => inp.skip(n.checked_mul(size).ok_or("array too long")?)?,
                None => {
                    // Strings and arrays take at least 8 bytes each.
                    inp.fits(n, 8, "array element")?;
                    for _ in 0..n {
                        read_value(inp, inner, depth + 1)?;
                    }
                }
            }
            Ok(Value::Other)
        }
        t => match fixed(t) {
            Some(size) => inp.skip(size).map(|()| Value::Other),
            None => Err(format!("unknown metadata value type {t}")),
        },
    }
}

/// One row of the tensor table, offsets relative to the data section.
fn read_tensor_info<R: Read>(inp: &mut Input<R>) -> Result<(String, GgufTensor), String> {
    let name = inp.string()?;
    let n_dims = inp.u32()?;
    if !(1..=4).contains(&n_dims) {
        return Err(format!(
            "tensor `{name}` has {n_dims} dimensions (1 to 4 allowed)"
        ));
    }
    let mut shape = Vec::with_capacity(n_dims as usize);
    for _ in 0..n_dims {
        shape.push(
            usize::try_from(inp.u64()?)
                .map_err(|_| format!("tensor `{name}`: dimension too large"))?,
        );
    }
    shape.reverse();
    let id = inp.u32()?;
    let ty = ggml_type(id).ok_or_else(|| format!("tensor `{name}` has unknown type id {id}"))?;
    let start = inp.u64()?;
    let elems = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .filter(|&n| n > 0)
        .ok_or_else(|| format!("tensor `{name}` has shape {shape:?}: empty or too large"))?;
    let row = shape[shape.len() - 1];
    if row % ty.block_size() != 0 {
        return Err(format!(
            "tensor `{name}` of type {ty:?} has rows of {row} values, not a multiple of its block of {}",
            ty.block_size()
        ));
    }
    // elems fits a usize, its bytes need not (4 bytes per f32 value): found by fuzzing.
    let len = ((elems / ty.block_size()) as u64)
        .checked_mul(ty.type_size() as u64)
        .ok_or_else(|| format!("tensor `{name}` has shape {shape:?}: too large"))?;
    Ok((
        name,
        GgufTensor {
            ty,
            shape,
            start,
            len,
        },
    ))
}

/// Parses and checks a GGUF header from `r` (positioned at the file's start), `file_len`
/// bytes long: version 2 or 3, lengths within the file, tensors of known type whose byte
/// ranges are aligned, inside the file and disjoint.
pub(crate) fn read_header<R: Read>(r: R, file_len: u64) -> Result<GgufHeader, String> {
    let mut inp = Input {
        r,
        pos: 0,
        len: file_len,
    };
    if &inp.bytes::<4>()? != b"GGUF" {
        return Err("not a GGUF file (no GGUF magic)".into());
    }
    let version = inp.u32()?;
    if !(2..=3).contains(&version) {
        return Err(format!("GGUF version {version} unsupported (2 or 3)"));
    }
    let (n_tensors, n_kv) = (inp.u64()?, inp.u64()?);
    inp.fits(n_tensors, 8 + 4 + 8 + 4 + 8, "tensor")?;
    inp.fits(n_kv, 8 + 4 + 1, "metadata entry")?;
    let mut head = GgufHeader::default();
    let mut alignment = DEFAULT_ALIGNMENT;
    for _ in 0..n_kv {
        let key = inp.string()?;
        let ty = inp.u32()?;
        match (read_value(&mut inp, ty, 0)?, key.as_str()) {
            (Value::Int(a), "general.alignment") => alignment = a,
            (_, "general.alignment") => return Err("general.alignment is not an integer".into()),
            (Value::Str(s), _) => {
                head.strings.insert(key, s);
            }
            _ => {}
        }
    }
    if alignment == 0 || !alignment.is_power_of_two() || alignment > 1 << 20 {
        return Err(format!(
            "general.alignment {alignment} is not a power of two up to 1 MiB"
        ));
    }
    // The count is bounded by the file's size, not by what is sane to pre-allocate.
    let mut rows = Vec::with_capacity(n_tensors.min(4096) as usize);
    for _ in 0..n_tensors {
        rows.push(read_tensor_info(&mut inp)?);
    }
    let data = inp.pos.div_ceil(alignment) * alignment;
    place(&mut head, rows, data, alignment, file_len)?;
    Ok(head)
}

/// Turns relative offsets into absolute ranges and checks alignment, bounds and overlaps.
fn place(
    head: &mut GgufHeader,
    rows: Vec<(String, GgufTensor)>,
    data: u64,
    alignment: u64,
    file_len: u64,
) -> Result<(), String> {
    let mut ranges: Vec<(u64, u64, String)> = Vec::with_capacity(rows.len());
    for (name, mut t) in rows {
        if t.start % alignment != 0 {
            return Err(format!(
                "tensor `{name}` offset {} is not aligned to {alignment}",
                t.start
            ));
        }
        t.start = data
            .checked_add(t.start)
            .filter(|s| s.checked_add(t.len).is_some_and(|e| e <= file_len))
            .ok_or_else(|| {
                format!(
                    "tensor `{name}` ({:?} {:?}, {} bytes) runs past the end of the file ({file_len} bytes): truncated or damaged",
                    t.ty, t.shape, t.len
                )
            })?;
        ranges.push((t.start, t.start + t.len, name.clone()));
        if head.tensors.insert(name.clone(), t).is_some() {
            return Err(format!("tensor `{name}` is listed twice"));
        }
    }
    ranges.sort();
    for w in ranges.windows(2) {
        if w[1].0 < w[0].1 {
            return Err(format!(
                "tensors `{}` and `{}` overlap in the file (their sizes do not match their offsets)",
                w[0].2, w[1].2
            ));
        }
    }
    Ok(())
}

/// An open, checked GGUF file.
pub(crate) struct GgufFile {
    pub(crate) header: GgufHeader,
    file: std::fs::File,
}

impl GgufFile {
    /// Opens `path` and checks its header; errors are messages without the path.
    pub(crate) fn open(path: &Path) -> Result<Self, String> {
        let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
        let len = file.metadata().map_err(|e| e.to_string())?.len();
        let header = read_header(std::io::BufReader::new(&file), len)?;
        Ok(Self { header, file })
    }

    /// Reads tensor `name`'s bytes (checked as in the header).
    pub(crate) fn bytes(&mut self, name: &str) -> Result<(GgufTensor, Vec<u8>), String> {
        let t = self
            .header
            .tensors
            .get(name)
            .ok_or_else(|| format!("no tensor `{name}`"))?
            .clone();
        let mut v = vec![0u8; t.len as usize];
        self.file
            .seek(SeekFrom::Start(t.start))
            .and_then(|_| self.file.read_exact(&mut v))
            .map_err(|e| format!("reading tensor `{name}`: {e}"))?;
        Ok((t, v))
    }
}

/// A quantized tensor from its GGUF bytes.
pub(crate) fn qtensor(
    t: &GgufTensor,
    data: &[u8],
    device: &Device,
) -> candle_core::Result<QTensor> {
    candle_core::quantized::ggml_file::qtensor_from_ggml(t.ty, data, t.shape.clone(), device)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A v3 header with the given tensors (name, dims innermost first, type id, offset).
    fn header(tensors: &[(&str, &[u64], u32, u64)], alignment: Option<u32>) -> Vec<u8> {
        let mut h = b"GGUF".to_vec();
        h.extend(3u32.to_le_bytes());
        h.extend((tensors.len() as u64).to_le_bytes());
        h.extend((alignment.is_some() as u64).to_le_bytes());
        let s = |h: &mut Vec<u8>, s: &str| {
            h.extend((s.len() as u64).to_le_bytes());
            h.extend(s.as_bytes());
        };
        if let Some(a) = alignment {
            s(&mut h, "general.alignment");
            h.extend(4u32.to_le_bytes());
            h.extend(a.to_le_bytes());
        }
        for (name, dims, ty, off) in tensors {
            s(&mut h, name);
            h.extend((dims.len() as u32).to_le_bytes());
            for d in *dims {
                h.extend(d.to_le_bytes());
            }
            h.extend(ty.to_le_bytes());
            h.extend(off.to_le_bytes());
        }
        h
    }

    fn parse(h: &[u8], data: usize) -> Result<GgufHeader, String> {
        let mut f = h.to_vec();
        f.resize(h.len().div_ceil(32) * 32 + data, 0);
        read_header(&f[..], f.len() as u64)
    }

    #[test]
    fn a_good_table_parses() {
        let h = header(&[("a", &[32, 2], 8, 0), ("b", &[4], 0, 96)], None);
        let head = parse(&h, 128).unwrap();
        assert_eq!(head.tensors["a"].shape, vec![2, 32]);
        assert_eq!(head.tensors["a"].len, 68);
        assert_eq!(head.tensors["b"].len, 16);
    }

    #[test]
    fn bad_tables_are_refused_with_the_reason() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (
                header(&[("a", &[32, 2], 8, 0), ("b", &[4], 0, 64)], None),
                "overlap",
            ),
            (header(&[("a", &[32, 2], 8, 4)], None), "not aligned"),
            (header(&[("a", &[32, 2], 8, 0)], Some(0)), "power of two"),
            (
                header(&[("a", &[30, 2], 8, 0)], None),
                "not a multiple of its block",
            ),
            (header(&[("a", &[32, 2], 77, 0)], None), "unknown type"),
            (header(&[("a", &[32, 2], 8, 1 << 40)], None), "past the end"),
            (header(&[("a", &[u64::MAX, 4], 0, 0)], None), "too large"),
            // 2^62 f32 values: the count fits, its 2^64 bytes do not.
            (header(&[("a", &[1 << 62], 0, 0)], None), "too large"),
            (
                header(&[("a", &[32], 8, 0), ("a", &[32], 8, 64)], None),
                "listed twice",
            ),
        ];
        for (h, want) in cases {
            let err = parse(&h, 256).unwrap_err();
            assert!(err.contains(want), "{want}: {err}");
        }
        let mut lie = header(&[], None);
        lie[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(parse(&lie, 0).unwrap_err().contains("does not fit"));
    }
}
