//! Deterministic random-weight checkpoints in the released format, for demos and benchmarks
//! without the real weights.

use std::path::Path;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

use super::candle_engine::CandleMimi;
use super::config::MimiConfig;
use super::load::Vars;
use super::MimiError;
use crate::replace::replace_file;

/// Writes a safetensors file with every tensor of `cfg` (released names and shapes), filled
/// deterministically from `seed`.
///
/// Unlike the reference's default initialisation (all-zero codebooks), the weights keep
/// activations at unit scale (N(0, 1/fan_in)), the transformers contribute (layer scale 0.2)
/// and the codebooks are random centroids at the latent's scale, so speech gives varied codes.
pub fn write_random_checkpoint(cfg: &MimiConfig, seed: u64, path: &Path) -> Result<(), MimiError> {
    cfg.validate()?;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    // One stream drawn in request order: the same seed gives the same file.
    let v = Vars::made(
        Box::new(move |name, shape| random_values(name, shape, &mut rng)),
        true,
    );
    CandleMimi::build(&v, cfg, cfg.quantizer.n_q)?;
    let tensors = v.take_made();
    replace_file(
        path,
        |tmp| {
            candle_core::safetensors::save(&tensors, tmp).map_err(|e| MimiError::Checkpoint {
                path: path.to_path_buf(),
                msg: format!("cannot write: {e}"),
            })
        },
        |p, error| MimiError::Io {
            path: p.to_path_buf(),
            error,
        },
    )
}

/// Values for one tensor (see [`write_random_checkpoint`]).
fn random_values(name: &str, shape: &[usize], rng: &mut ChaCha8Rng) -> Vec<f32> {
    let n: usize = shape.iter().product();
    let fill = |v: f32| vec![v; n];
    if name.ends_with("._initialized") || name.ends_with(".cluster_usage") {
        fill(1.0)
    } else if name.ends_with("layer_scale_1.scale") || name.ends_with("layer_scale_2.scale") {
        fill(0.2)
    } else if name.contains(".norm") && name.ends_with(".weight") {
        fill(1.0)
    } else if name.ends_with(".bias") {
        normal(rng, n, if name.contains(".norm") { 0.0 } else { 0.01 })
    } else if name.ends_with(".embedding_sum") {
        normal(rng, n, 0.1)
    } else {
        // Fan-in: a transposed conv of kernel 2*stride sums 2 input steps per output sample.
        let fan_in = if name.contains("convtr") {
            2 * shape[0] / if shape[1] == 1 { shape[0] } else { 1 }
        } else {
            shape[1..].iter().product::<usize>()
        };
        normal(rng, n, 1.0 / (fan_in.max(1) as f32).sqrt())
    }
}

fn normal(rng: &mut ChaCha8Rng, n: usize, std: f32) -> Vec<f32> {
    if std == 0.0 {
        return vec![0.0; n];
    }
    // std is finite and positive here, so Normal::new cannot fail.
    let d = Normal::new(0.0f32, std).unwrap_or(Normal::new(0.0, 1.0).expect("unit normal"));
    (0..n).map(|_| d.sample(rng)).collect()
}
