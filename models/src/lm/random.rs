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
/// `ty`, one tensor at a time: a 7B shape never needs its f32 weights in memory.
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
    write_gguf(path, cfg, &entries, |i| {
        let (name, shape, t) = &entries[i];
        let v = random_values(name, shape, &mut tensor_rng(seed, i));
        let e = |e: candle_core::Error| LmError::Candle(format!("encoding `{name}`: {e}"));
        let x = Tensor::from_vec(v, shape.clone(), &Device::Cpu).map_err(e)?;
        encode(&x, *t).map_err(e)
    })
}
