//! Split residual vector quantizer: one semantic codebook (`rvq_first`) and the acoustic ones
//! (`rvq_rest`), each group with its own input and output projections, both fed the same latent.

use candle_core::{DType, Result, Tensor, D};

use super::config::QuantizerConfig;
use super::kernels::Packed;
use super::load::Vars;
use super::MimiError;

#[derive(Debug, Clone)]
struct Codebook {
    /// Centroids `[bins, dim]` = `embedding_sum / max(cluster_usage, 1e-5)`.
    centroids: Tensor,
    /// The same, transposed `[dim, bins]`, for the distance product.
    centroids_t: Packed,
    /// `|c|^2` per centroid, `[1, bins]`.
    norms: Tensor,
}

#[derive(Debug, Clone)]
struct Group {
    /// `[latent, dim]` (transposed from the checkpoint).
    input_proj: Packed,
    /// `[dim, latent]` (transposed from the checkpoint).
    output_proj: Packed,
    codebooks: Vec<Codebook>,
}

/// The quantizer with `num_codebooks` active levels. It runs in f32 whatever Mimi's compute
/// dtype: a nearest-centroid search in half precision would flip codes whose distances differ
/// by less than its rounding, and it is a small part of the work.
#[derive(Debug, Clone)]
pub(crate) struct Quantizer {
    first: Group,
    rest: Group,
}

/// One quantizer group under `v` (`quantizer.rvq_first` / `rvq_rest`): its projections and
/// `levels` codebooks, of which the first `active` are loaded.
fn group(
    v: &Vars,
    cfg: &QuantizerConfig,
    latent: usize,
    levels: usize,
    active: usize,
) -> std::result::Result<Group, MimiError> {
    let (dim, bins) = (cfg.dimension, cfg.bins);
    let proj = |n: &str, shape: &[usize]| -> std::result::Result<Packed, MimiError> {
        let t = v.get_f32(n, shape)?;
        Ok(Packed::new(&t.squeeze(2)?.t()?, 1)?)
    };
    let input_proj = proj("input_proj.weight", &[dim, latent, 1])?;
    let output_proj = proj("output_proj.weight", &[latent, dim, 1])?;
    let mut codebooks = Vec::with_capacity(active);
    for l in 0..levels {
        let c = v.pp(format!("vq.layers.{l}._codebook"));
        c.declare("_initialized", &[1])?;
        if l >= active {
            c.declare("cluster_usage", &[bins])?;
            c.declare("embedding_sum", &[bins, dim])?;
            continue;
        }
        let usage = c.get_f32("cluster_usage", &[bins])?;
        let sum = c.get_f32("embedding_sum", &[bins, dim])?;
        let centroids = sum.broadcast_div(&usage.clamp(1e-5f32, f32::MAX)?.unsqueeze(1)?)?;
        let norms = centroids.sqr()?.sum(1)?.unsqueeze(0)?;
        let centroids_t = Packed::new(&centroids.t()?, 1)?;
        codebooks.push(Codebook {
            centroids,
            centroids_t,
            norms,
        });
    }
    Ok(Group {
        input_proj,
        output_proj,
        codebooks,
    })
}

impl Group {
    /// `x`: `[T, latent]` -> one `[T]` u32 code tensor per level.
    fn encode(&self, x: &Tensor, out: &mut Vec<Tensor>) -> Result<()> {
        let mut r = self.input_proj.mm(x)?;
        for cb in &self.codebooks {
            // argmin |r - c|^2 = argmin (|c|^2 - 2 r.c)
            let dots = cb.centroids_t.mm(&r)?;
            let d = cb.norms.broadcast_sub(&(dots * 2.0)?)?;
            let codes = d.argmin(D::Minus1)?.to_dtype(DType::U32)?;
            r = (r - cb.centroids.index_select(&codes, 0)?)?;
            out.push(codes);
        }
        Ok(())
    }

    /// `codes[l]`: `[T]` u32 -> `[T, latent]`.
    fn decode(&self, codes: &[Tensor]) -> Result<Tensor> {
        let mut acc: Option<Tensor> = None;
        for (cb, c) in self.codebooks.iter().zip(codes) {
            let v = cb.centroids.index_select(c, 0)?;
            acc = Some(match acc {
                Some(a) => (a + v)?,
                None => v,
            });
        }
        match acc {
            Some(a) => self.output_proj.mm(&a),
            None => candle_core::bail!("no codebook level to decode"),
        }
    }
}

impl Quantizer {
    /// The quantizer under `v` (`quantizer`) for a `latent`-wide input, with the first
    /// `num_codebooks` levels active (1 semantic + `num_codebooks - 1` acoustic).
    pub(crate) fn load(
        v: &Vars,
        cfg: &QuantizerConfig,
        latent: usize,
        num_codebooks: usize,
    ) -> std::result::Result<Self, MimiError> {
        let rest = cfg.n_q - 1;
        Ok(Self {
            first: group(&v.pp("rvq_first"), cfg, latent, 1, 1)?,
            rest: group(&v.pp("rvq_rest"), cfg, latent, rest, num_codebooks - 1)?,
        })
    }

    /// Whether `other` holds these very tensors (a clone of this loaded quantizer).
    pub(crate) fn same_weights(&self, other: &Quantizer) -> bool {
        let first = |q: &Quantizer| q.first.codebooks.first().map(|c| c.centroids.id());
        first(self) == first(other)
    }

    /// `x`: `[T, latent]` -> `[T, K]` u32 codes.
    pub(crate) fn encode(&self, x: &Tensor) -> Result<Tensor> {
        let x = &x.to_dtype(DType::F32)?;
        let mut levels = Vec::with_capacity(1 + self.rest.codebooks.len());
        self.first.encode(x, &mut levels)?;
        self.rest.encode(x, &mut levels)?;
        Tensor::stack(&levels, 1)
    }

    /// `codes`: `[T, K]` u32 -> `[T, latent]`.
    pub(crate) fn decode(&self, codes: &Tensor) -> Result<Tensor> {
        let k = codes.dim(1)?;
        let levels: Vec<Tensor> = (0..k)
            .map(|l| codes.narrow(1, l, 1)?.squeeze(1)?.contiguous())
            .collect::<Result<_>>()?;
        let mut y = self.first.decode(&levels[..1])?;
        if k > 1 {
            y = (y + self.rest.decode(&levels[1..])?)?;
        }
        Ok(y)
    }
}
