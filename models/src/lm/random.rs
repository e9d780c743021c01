//! Deterministic random checkpoints: the offline demo's model and the benchmarks' 7B shape.

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::GgmlDType;
use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::gguf::{encode, write_gguf, QuantType};
use super::weights::Store;
use super::{Layout, LmConfig, LmError, LmModel};
use crate::replace::replace_file;

/// Every tensor (name, shape) of a checkpoint of `cfg` in `layout`, in a fixed order: the
/// requests [`LmModel::load`] makes, recorded by building the model without a file.
pub fn checkpoint_tensors(
    cfg: &LmConfig,
    layout: Layout,
) -> Result<Vec<(String, Vec<usize>)>, LmError> {
    cfg.validate()?;
    let mut st = Store::plan(layout);
    LmModel::build(&mut st, cfg)?;
    st.finish()
}

/// Random values for one tensor: norm gains near 1, everything else uniform with standard
/// deviation 1/sqrt(fan_in) (so activations keep their scale through the layers).
fn random_values(name: &str, shape: &[usize], rng: &mut ChaCha8Rng) -> Vec<f32> {
    let n: usize = shape.iter().product();
    if name.ends_with("alpha") {
        return (0..n)
            .map(|_| 1.0 + 0.1 * (rng.random::<f32>() - 0.5))
            .collect();
    }
    let fan_in = *shape.last().unwrap_or(&1) as f32;
    let a = (3.0 / fan_in).sqrt();
    (0..n)
        .map(|_| a * (2.0 * rng.random::<f32>() - 1.0))
        .collect()
}

fn tensor_rng(seed: u64, index: usize) -> ChaCha8Rng {
    // One stream per tensor: the values of a tensor do not depend on the file format.
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(index as u64);
    rng
}

/// Writes a deterministic random f32 safetensors checkpoint of `cfg` (same `seed`, same
/// bytes). For small configurations: the offline demo and tests.
pub fn write_random_checkpoint(
    cfg: &LmConfig,
    seed: u64,
    path: &Path,
    layout: Layout,
) -> Result<(), LmError> {
    let mut map = HashMap::new();
    for (i, (name, shape)) in checkpoint_tensors(cfg, layout)?.into_iter().enumerate() {
        let v = random_values(&name, &shape, &mut tensor_rng(seed, i));
        let t =
            Tensor::from_vec(v, shape, &Device::Cpu).map_err(|e| LmError::Candle(e.to_string()))?;
        map.insert(name, t);
    }
    let save = |tmp: &Path| {
        candle_core::safetensors::save(&map, tmp).map_err(|e| LmError::Format {
            path: path.to_path_buf(),
            what: format!("cannot write safetensors: {e}"),
        })
    };
    replace_file(path, save, |p, error| LmError::Io {
        path: p.to_path_buf(),
        error,
    })
}

/// Writes a deterministic random GGUF checkpoint of `cfg` (candle layout) quantized to
/// `ty`, a few tensors at a time (one per thread, in parallel): a 7B shape never needs its
/// f32 weights in memory. Each tensor has its own random stream, so the bytes do not depend
/// on the thread count.
pub fn write_random_gguf(
    cfg: &LmConfig,
    seed: u64,
    path: &Path,
    ty: QuantType,
) -> Result<(), LmError> {
    let entries: Vec<(String, Vec<usize>, GgmlDType)> = checkpoint_tensors(cfg, Layout::Candle)?
        .into_iter()
        .map(|(n, s)| {
            let t = ty.for_shape(&s);
            (n, s, t)
        })
        .collect();
    let one = |i: usize| -> Result<Vec<u8>, LmError> {
        let (name, shape, t) = &entries[i];
        let v = random_values(name, shape, &mut tensor_rng(seed, i));
        let e = |e: candle_core::Error| LmError::Candle(format!("encoding `{name}`: {e}"));
        let x = Tensor::from_vec(v, shape.clone(), &Device::Cpu).map_err(e)?;
        encode(&x, *t).map_err(e)
    };
    let mut ahead = Ahead::new(entries.len(), one);
    write_gguf(path, cfg, &entries, |i| ahead.get(i))
}

/// Tensors made in parallel batches, handed out in order.
struct Ahead<F> {
    make: F,
    total: usize,
    next: usize,
    ready: std::collections::VecDeque<Result<Vec<u8>, LmError>>,
}

impl<F: Fn(usize) -> Result<Vec<u8>, LmError> + Sync> Ahead<F> {
    fn new(total: usize, make: F) -> Self {
        Self {
            make,
            total,
            next: 0,
            ready: Default::default(),
        }
    }

    /// Tensor `i`; calls come in order 0, 1, 2, ...
    fn get(&mut self, i: usize) -> Result<Vec<u8>, LmError> {
        use rayon::prelude::*;
        if self.ready.is_empty() {
            let n = rayon::current_num_threads().clamp(1, 16);
            let end = (self.next + n).min(self.total);
            let make = &self.make;
            let batch: Vec<_> = (self.next..end).into_par_iter().map(make).collect();
            self.ready.extend(batch);
            self.next = end;
        }
        debug_assert_eq!(i + self.ready.len(), self.next);
        self.ready
            .pop_front()
            .unwrap_or_else(|| Err(LmError::Config(format!("internal: tensor {i} not made"))))
    }
}

/// Writes a deterministic random checkpoint of `cfg` as safetensors in `dtype` (bf16, f16
/// or f32), streamed to the file a few tensors at a time: the 7B shape in bf16 (15.4 GB, as
/// the released `model.safetensors`) without holding it in memory. Same values as
/// [`write_random_checkpoint`] with the same seed, rounded to `dtype`.
pub fn write_random_safetensors(
    cfg: &LmConfig,
    seed: u64,
    path: &Path,
    layout: Layout,
    dtype: candle_core::DType,
) -> Result<(), LmError> {
    use std::io::Write;
    cfg.validate()?;
    let name = match dtype {
        candle_core::DType::BF16 => "BF16",
        candle_core::DType::F16 => "F16",
        candle_core::DType::F32 => "F32",
        other => {
            return Err(LmError::Config(format!(
                "dtype {other:?}: use bf16, f16 or f32"
            )))
        }
    };
    let entries = checkpoint_tensors(cfg, layout)?;
    let mut header = serde_json::Map::new();
    let mut offset = 0usize;
    for (n, shape) in &entries {
        let bytes = shape.iter().product::<usize>() * dtype.size_in_bytes();
        header.insert(
            n.clone(),
            serde_json::json!({"dtype": name, "shape": shape, "data_offsets": [offset, offset + bytes]}),
        );
        offset += bytes;
    }
    let mut head = serde_json::Value::Object(header).to_string().into_bytes();
    head.resize(head.len().div_ceil(8) * 8, b' ');
    let io = |error| LmError::Io {
        path: path.to_path_buf(),
        error,
    };
    let mut w =
        std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path).map_err(io)?);
    w.write_all(&(head.len() as u64).to_le_bytes())
        .map_err(io)?;
    w.write_all(&head).map_err(io)?;
    let one = |i: usize| -> Result<Vec<u8>, LmError> {
        let (n, shape) = &entries[i];
        let v = random_values(n, shape, &mut tensor_rng(seed, i));
        let e = |e: candle_core::Error| LmError::Candle(format!("encoding `{n}`: {e}"));
        let t = Tensor::from_vec(v, shape.clone(), &Device::Cpu)
            .and_then(|t| t.to_dtype(dtype))
            .map_err(e)?;
        let mut out = Vec::with_capacity(t.elem_count() * dtype.size_in_bytes());
        t.write_bytes(&mut out)
            .map_err(|er| LmError::Candle(format!("encoding `{n}`: {er}")))?;
        Ok(out)
    };
    let mut ahead = Ahead::new(entries.len(), one);
    for i in 0..entries.len() {
        w.write_all(&ahead.get(i)?).map_err(io)?;
    }
    w.flush().map_err(io)
}
