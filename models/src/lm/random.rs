//! Deterministic random checkpoints: the offline demo's model and the benchmarks' 7B shape.

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::GgmlDType;
use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::gguf::{encode, write_gguf, QuantType};
use super::{Layout, LmConfig, LmError};

/// Every tensor (name, shape) of a checkpoint of `cfg` in `layout`, in a fixed order.
pub fn checkpoint_tensors(cfg: &LmConfig, layout: Layout) -> Vec<(String, Vec<usize>)> {
    let (d, dd, h, dh) = (
        cfg.dim,
        cfg.depformer_dim,
        cfg.hidden(),
        cfg.depformer_hidden(),
    );
    let mut v: Vec<(String, Vec<usize>)> = Vec::new();
    for i in 0..cfg.n_q {
        v.push((format!("emb.{i}.weight"), vec![cfg.card + 1, d]));
    }
    v.push(("text_emb.weight".into(), vec![cfg.text_card + 1, d]));
    v.push(("text_linear.weight".into(), vec![cfg.text_card, d]));
    v.push(("out_norm.alpha".into(), vec![1, 1, d]));
    for l in 0..cfg.num_layers {
        let p = format!("transformer.layers.{l}.");
        v.push((format!("{p}norm1.alpha"), vec![1, 1, d]));
        v.push((format!("{p}norm2.alpha"), vec![1, 1, d]));
        v.push((format!("{p}self_attn.in_proj_weight"), vec![3 * d, d]));
        v.push((format!("{p}self_attn.out_proj.weight"), vec![d, d]));
        v.push((format!("{p}gating.linear_in.weight"), vec![2 * h, d]));
        v.push((format!("{p}gating.linear_out.weight"), vec![d, h]));
    }
    let q = cfg.dep_q;
    match layout {
        Layout::Candle => {
            for k in 0..q {
                let rows = if k == 0 {
                    cfg.text_card + 1
                } else {
                    cfg.card + 1
                };
                v.push((format!("depformer.{k}.linear_in.weight"), vec![dd, d]));
                v.push((format!("depformer.{k}.emb.weight"), vec![rows, dd]));
                v.push((
                    format!("depformer.{k}.linear_out.weight"),
                    vec![cfg.card, dd],
                ));
                for l in 0..cfg.depformer_num_layers {
                    let p = format!("depformer.{k}.transformer.layers.{l}.");
                    v.push((format!("{p}norm1.alpha"), vec![1, 1, dd]));
                    v.push((format!("{p}norm2.alpha"), vec![1, 1, dd]));
                    v.push((format!("{p}self_attn.in_proj_weight"), vec![3 * dd, dd]));
                    v.push((format!("{p}self_attn.out_proj.weight"), vec![dd, dd]));
                    v.push((format!("{p}gating.linear_in.weight"), vec![2 * dh, dd]));
                    v.push((format!("{p}gating.linear_out.weight"), vec![dd, dh]));
                }
            }
        }
        Layout::PyTorch => {
            for k in 0..q {
                v.push((format!("depformer_in.{k}.weight"), vec![dd, d]));
                v.push((format!("linears.{k}.weight"), vec![cfg.card, dd]));
            }
            v.push((
                "depformer_text_emb.weight".into(),
                vec![cfg.text_card + 1, dd],
            ));
            for k in 0..q - 1 {
                v.push((format!("depformer_emb.{k}.weight"), vec![cfg.card + 1, dd]));
            }
            for l in 0..cfg.depformer_num_layers {
                let p = format!("depformer.layers.{l}.");
                v.push((format!("{p}norm1.alpha"), vec![1, 1, dd]));
                v.push((format!("{p}norm2.alpha"), vec![1, 1, dd]));
                v.push((format!("{p}self_attn.in_proj_weight"), vec![q * 3 * dd, dd]));
                v.push((format!("{p}self_attn.out_proj.weight"), vec![q * dd, dd]));
                for k in 0..q {
                    v.push((format!("{p}gating.{k}.linear_in.weight"), vec![2 * dh, dd]));
                    v.push((format!("{p}gating.{k}.linear_out.weight"), vec![dd, dh]));
                }
            }
        }
    }
    v
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
    cfg.validate()?;
    let mut map = HashMap::new();
    for (i, (name, shape)) in checkpoint_tensors(cfg, layout).into_iter().enumerate() {
        let v = random_values(&name, &shape, &mut tensor_rng(seed, i));
        let t =
            Tensor::from_vec(v, shape, &Device::Cpu).map_err(|e| LmError::Candle(e.to_string()))?;
        map.insert(name, t);
    }
    candle_core::safetensors::save(&map, path).map_err(|e| LmError::Format {
        path: path.to_path_buf(),
        what: format!("cannot write safetensors: {e}"),
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
    cfg.validate()?;
    let entries: Vec<(String, Vec<usize>, GgmlDType)> = checkpoint_tensors(cfg, Layout::Candle)
        .into_iter()
        .map(|(n, s)| {
            let t = ty.for_shape(&s);
            (n, s, t)
        })
        .collect();
    write_gguf(path, &entries, |i| {
        let (name, shape, t) = &entries[i];
        let v = random_values(name, shape, &mut tensor_rng(seed, i));
        let e = |e: candle_core::Error| LmError::Candle(format!("encoding `{name}`: {e}"));
        let x = Tensor::from_vec(v, shape.clone(), &Device::Cpu).map_err(e)?;
        encode(&x, *t).map_err(e)
    })
}
