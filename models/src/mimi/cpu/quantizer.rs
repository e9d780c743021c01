//! Split residual vector quantizer on `[T, latent]` rows: one semantic codebook
//! (`rvq_first`) and the acoustic ones (`rvq_rest`), each group with its own input and output
//! projections, both fed the same latent.
//!
//! The nearest centroid is `argmin_c |c|^2 - 2 r.c`, the dot products for all 2048 centroids
//! at once as one matrix product against the packed, transposed codebook.

use std::sync::Arc;
use std::time::Instant;

use super::conv::grow;
use super::gemm::{dense, gemm, gemm_jobs, Epi, Jobs, MAX_JOBS};
use super::isa::Isa;
use super::packed::{PackedMat, WeightDtype};
use super::profile::{Kind, Prof};
use super::{tensor, Load};
use crate::mimi::MimiError;

#[derive(Debug)]
struct Codebook {
    /// `[bins, dim]` = `embedding_sum / max(cluster_usage, 1e-5)`.
    centroids: Vec<f32>,
    /// `[dim, bins]` packed, for the distance product.
    packed: PackedMat,
    /// `|c|^2` per centroid.
    norms: Vec<f32>,
}

#[derive(Debug)]
struct Group {
    /// `[latent, dim]`.
    input_proj: PackedMat,
    /// `[dim, latent]`.
    output_proj: PackedMat,
    codebooks: Vec<Codebook>,
}

/// The quantizer's weights (shared) and its scratch rows.
#[derive(Debug, Clone)]
pub(crate) struct Quantizer {
    groups: Arc<[Group; 2]>,
    dim: usize,
    latent: usize,
    bins: usize,
    residual: Vec<f32>,
    dots: Vec<f32>,
    sum: Vec<f32>,
}

fn group(l: &Load, name: &str, levels: usize) -> Result<Group, MimiError> {
    let p = format!("quantizer.{name}");
    let proj = |n: &str| -> Result<PackedMat, MimiError> {
        let (w, s) = tensor(l.w, &format!("{p}.{n}.weight"))?;
        // The projections are a small part of the bytes; f32 keeps the codes closest.
        Ok(PackedMat::from_rows(&w, s[0], s[1], WeightDtype::F32))
    };
    let mut codebooks = Vec::with_capacity(levels);
    for i in 0..levels {
        let c = format!("{p}.vq.layers.{i}._codebook");
        let (sum, s) = tensor(l.w, &format!("{c}.embedding_sum"))?;
        let (usage, _) = tensor(l.w, &format!("{c}.cluster_usage"))?;
        let (bins, dim) = (s[0], s[1]);
        let mut centroids = sum;
        for (row, &u) in centroids.chunks_exact_mut(dim).zip(&usage) {
            let u = u.max(1e-5);
            row.iter_mut().for_each(|v| *v /= u);
        }
        let norms = centroids
            .chunks_exact(dim)
            .map(|r| r.iter().map(|v| v * v).sum())
            .collect();
        codebooks.push(Codebook {
            packed: PackedMat::from_rows(&centroids, bins, dim, l.dtype),
            centroids,
            norms,
        });
    }
    Ok(Group {
        input_proj: proj("input_proj")?,
        output_proj: proj("output_proj")?,
        codebooks,
    })
}

impl Quantizer {
    /// Loads the first `num_codebooks` levels (1 semantic + `num_codebooks - 1` acoustic).
    pub(crate) fn load(l: &Load, num_codebooks: usize) -> Result<Self, MimiError> {
        let first = group(l, "rvq_first", 1)?;
        let rest = group(l, "rvq_rest", num_codebooks - 1)?;
        let (latent, dim) = (first.input_proj.k, first.input_proj.n);
        let bins = first.codebooks.first().map_or(0, |c| c.norms.len());
        Ok(Quantizer {
            groups: Arc::new([first, rest]),
            dim,
            latent,
            bins,
            residual: Vec::new(),
            dots: Vec::new(),
            sum: Vec::new(),
        })
    }

    /// The same weights without scratch rows yet.
    pub(crate) fn fresh(&self) -> Quantizer {
        Quantizer {
            groups: Arc::clone(&self.groups),
            residual: Vec::new(),
            dots: Vec::new(),
            sum: Vec::new(),
            ..*self
        }
    }

    /// Bytes of scratch rows.
    pub(crate) fn state_bytes(&self) -> usize {
        (self.residual.capacity() + self.dots.capacity() + self.sum.capacity()) * 4
    }

    /// Bytes of codebooks and projections.
    pub(crate) fn bytes(&self) -> usize {
        self.groups
            .iter()
            .map(|g| {
                g.input_proj.bytes()
                    + g.output_proj.bytes()
                    + g.codebooks
                        .iter()
                        .map(|c| c.packed.bytes() + c.centroids.len() * 4)
                        .sum::<usize>()
            })
            .sum()
    }

    /// `x`: `[T, latent]` -> `codes`: `[T, K]` (row-major), for several streams' copies of
    /// one quantizer (the same weights): each projection and codebook is read once for all.
    pub(crate) fn encode_batch(
        isa: Isa,
        lanes: &mut [(&mut Quantizer, &[f32], &mut [u32])],
        prof: &mut Prof,
    ) {
        for chunk in lanes.chunks_mut(MAX_JOBS) {
            let Some((q0, _, _)) = chunk.first() else {
                return;
            };
            let groups = Arc::clone(&q0.groups);
            let (dim, bins, latent) = (q0.dim, q0.bins, q0.latent);
            let mut level = 0;
            for g in groups.iter() {
                let mut t0 = Instant::now();
                let mut jobs = Jobs::new();
                for (q, x, _) in chunk.iter_mut() {
                    let t = x.len() / latent;
                    jobs.push(x, t, grow(&mut q.residual, t * dim));
                }
                gemm_jobs(
                    isa,
                    &jobs,
                    dense(latent, latent),
                    &g.input_proj,
                    dim,
                    Epi::Store,
                );
                t0 = prof.lap(Kind::QuantProj, t0);
                for cb in &g.codebooks {
                    let mut jobs = Jobs::new();
                    for (q, x, _) in chunk.iter_mut() {
                        let t = x.len() / latent;
                        let dots = grow(&mut q.dots, t * bins);
                        jobs.push(&q.residual[..t * dim], t, dots);
                    }
                    gemm_jobs(isa, &jobs, dense(dim, dim), &cb.packed, bins, Epi::Store);
                    for (q, x, codes) in chunk.iter_mut() {
                        let t = x.len() / latent;
                        q.pick(cb, t, level, codes);
                    }
                    level += 1;
                }
                prof.lap(Kind::QuantSearch, t0);
            }
        }
    }

    /// Each of `t` rows' nearest centroid of `cb` (from `dots`) as code `level`, subtracted
    /// from the row's residual.
    fn pick(&mut self, cb: &Codebook, t: usize, level: usize, codes: &mut [u32]) {
        let (dim, bins) = (self.dim, self.bins);
        let k = codes.len() / t.max(1);
        for i in 0..t {
            let best = nearest(&cb.norms, &self.dots[i * bins..(i + 1) * bins]);
            codes[i * k + level] = best as u32;
            let c = &cb.centroids[best * dim..(best + 1) * dim];
            for (v, &c) in self.residual[i * dim..(i + 1) * dim].iter_mut().zip(c) {
                *v -= c;
            }
        }
    }

    /// `codes`: `[T, K]` -> `out`: `[T, latent]`.
    pub(crate) fn decode(
        &mut self,
        isa: Isa,
        codes: &[u32],
        k: usize,
        out: &mut [f32],
        prof: &mut Prof,
    ) {
        let t0 = Instant::now();
        let t = codes.len() / k;
        let dim = self.dim;
        let mut level = 0;
        for (gi, g) in self.groups.iter().enumerate() {
            let n = g.codebooks.len();
            if n == 0 {
                continue;
            }
            let acc = grow(&mut self.sum, t * dim);
            for i in 0..t {
                let a = &mut acc[i * dim..(i + 1) * dim];
                for (l, cb) in g.codebooks.iter().enumerate() {
                    let c = codes[i * k + level + l] as usize;
                    let row = &cb.centroids[c * dim..(c + 1) * dim];
                    if l == 0 {
                        a.copy_from_slice(row);
                    } else {
                        a.iter_mut().zip(row).for_each(|(a, &r)| *a += r);
                    }
                }
            }
            level += n;
            // The first group's projection is stored, the second one's added.
            let epi = if gi == 0 { Epi::Store } else { Epi::Add };
            gemm(
                isa,
                acc,
                t,
                dense(dim, dim),
                &g.output_proj,
                out,
                self.latent,
                epi,
            );
        }
        prof.lap(Kind::QuantProj, t0);
    }
}

/// Index of the smallest `norms[c] - 2 dots[c]` (the first on ties).
fn nearest(norms: &[f32], dots: &[f32]) -> usize {
    let mut best = (f32::INFINITY, 0);
    for (c, (&n, &d)) in norms.iter().zip(dots).enumerate() {
        let v = n - d * 2.0;
        if v < best.0 {
            best = (v, c);
        }
    }
    best.1
}
