//! Mimi's causal transformer on `[T, d]` rows: pre-norm layers (LayerNorm), RoPE (interleaved
//! pairs), layer scale, GELU feed-forward, the reference's limited context, and per-layer
//! KV rings. Every buffer is kept between calls.

use std::sync::Arc;
use std::time::Instant;

use super::attention::{attend_head, KvRing, Window};
use super::conv::grow;
use super::gemm::{dense, gemm_jobs, Epi, Jobs, MAX_JOBS};
use super::isa::Isa;
use super::packed::PackedMat;
use super::pool;
use super::profile::{Kind, Prof};
use super::{tensor, Load};
use crate::mimi::config::TransformerConfig;
use crate::mimi::MimiError;

/// One layer's weights (shared between clones).
#[derive(Debug)]
struct LayerWeights {
    /// `[d, 3d]`: q, k, v.
    in_proj: PackedMat,
    out_proj: PackedMat,
    linear1: PackedMat,
    linear2: PackedMat,
    norm1: (Vec<f32>, Vec<f32>),
    norm2: (Vec<f32>, Vec<f32>),
    scale1: Vec<f32>,
    scale2: Vec<f32>,
}

/// Scratch rows of one call.
#[derive(Debug, Clone, Default)]
struct Scratch {
    hx: Vec<f32>,
    qkv: Vec<f32>,
    att: Vec<f32>,
    /// Attention output per head, `[H, T, Dh]`.
    hout: Vec<f32>,
    ff: Vec<f32>,
    scores: Vec<f32>,
    cos: Vec<f32>,
    sin: Vec<f32>,
}

/// A stack of layers with its streaming position and caches.
#[derive(Debug, Clone)]
pub(crate) struct Transformer {
    layers: Arc<Vec<LayerWeights>>,
    rings: Vec<KvRing>,
    win: Window,
    d: usize,
    inv_freq: Vec<f32>,
    pos: usize,
    s: Scratch,
}

impl Transformer {
    pub(crate) fn load(
        l: &Load,
        prefix: &str,
        cfg: &TransformerConfig,
        granularity: usize,
    ) -> Result<Self, MimiError> {
        let d = cfg.d_model;
        let mut layers = Vec::with_capacity(cfg.num_layers);
        for i in 0..cfg.num_layers {
            let p = format!("{prefix}.transformer.layers.{i}");
            let lin = |n: &str| -> Result<PackedMat, MimiError> {
                let (w, s) = tensor(l.w, &format!("{p}.{n}"))?;
                Ok(PackedMat::from_rows(&w, s[0], s[1], l.dtype))
            };
            let v = |n: &str| -> Result<Vec<f32>, MimiError> {
                Ok(tensor(l.w, &format!("{p}.{n}"))?.0)
            };
            layers.push(LayerWeights {
                in_proj: lin("self_attn.in_proj_weight")?,
                out_proj: lin("self_attn.out_proj.weight")?,
                linear1: lin("linear1.weight")?,
                linear2: lin("linear2.weight")?,
                norm1: (v("norm1.weight")?, v("norm1.bias")?),
                norm2: (v("norm2.weight")?, v("norm2.bias")?),
                scale1: v("layer_scale_1.scale")?,
                scale2: v("layer_scale_2.scale")?,
            });
        }
        let head_dim = d / cfg.num_heads;
        // Same arithmetic as the reference: exp(i * (-ln(max_period) * 2 / D)) in f32.
        let step = (-(cfg.max_period.ln()) * 2.0 / head_dim as f64) as f32;
        Ok(Transformer {
            layers: Arc::new(layers),
            rings: (0..cfg.num_layers)
                .map(|_| KvRing::new(cfg.num_heads, head_dim))
                .collect(),
            win: Window {
                heads: cfg.num_heads,
                head_dim,
                context: cfg.context,
                granularity: granularity.max(1),
            },
            d,
            inv_freq: (0..head_dim / 2).map(|i| (i as f32 * step).exp()).collect(),
            pos: 0,
            s: Scratch::default(),
        })
    }

    pub(crate) fn reset(&mut self) {
        self.pos = 0;
    }

    /// The same weights at position 0, with empty caches and no buffers yet.
    pub(crate) fn fresh(&self) -> Transformer {
        Transformer {
            layers: Arc::clone(&self.layers),
            rings: (0..self.rings.len())
                .map(|_| KvRing::new(self.win.heads, self.win.head_dim))
                .collect(),
            win: self.win,
            d: self.d,
            inv_freq: self.inv_freq.clone(),
            pos: 0,
            s: Scratch::default(),
        }
    }

    /// Bytes of streaming state (key/value rings) and buffers.
    pub(crate) fn state_bytes(&self) -> usize {
        let s = &self.s;
        let scratch = [
            &s.hx, &s.qkv, &s.att, &s.hout, &s.ff, &s.scores, &s.cos, &s.sin,
        ]
        .iter()
        .map(|v| v.capacity())
        .sum::<usize>();
        self.rings.iter().map(KvRing::bytes).sum::<usize>() + scratch * 4
    }

    /// Whether `other` runs on these very weights (a stream of the same model).
    pub(crate) fn same_weights(&self, other: &Transformer) -> bool {
        Arc::ptr_eq(&self.layers, &other.layers)
    }

    /// Weight bytes.
    pub(crate) fn bytes(&self) -> usize {
        self.layers
            .iter()
            .map(|l| l.in_proj.bytes() + l.out_proj.bytes() + l.linear1.bytes() + l.linear2.bytes())
            .sum()
    }

    /// Runs each stream's `x` (`[T, d]`, `T` a multiple of the granularity) through the
    /// layers in place, for several streams' copies of one transformer (the same weights),
    /// each with its own positions and caches: every linear layer reads
    /// its weights once for all of them; attention runs stream by stream.
    pub(crate) fn step_batch(
        isa: Isa,
        lanes: &mut [(&mut Transformer, &mut [f32])],
        prof: &mut Prof,
    ) {
        for chunk in lanes.chunks_mut(MAX_JOBS) {
            let Some((t0, _)) = chunk.first() else {
                return;
            };
            let layers = Arc::clone(&t0.layers);
            let start = Instant::now();
            for (tr, x) in chunk.iter_mut() {
                let t = x.len() / tr.d;
                tr.begin(t);
            }
            prof.lap(Kind::Attention, start);
            for (li, lw) in layers.iter().enumerate() {
                Self::layer(isa, li, lw, chunk, prof);
            }
            for (tr, x) in chunk.iter_mut() {
                tr.pos += x.len() / tr.d;
            }
        }
    }

    /// The rotation tables of the next `t` positions; room in the caches for them.
    fn begin(&mut self, t: usize) {
        let half = self.inv_freq.len();
        let (cos, sin) = (
            grow(&mut self.s.cos, t * half),
            grow(&mut self.s.sin, t * half),
        );
        for i in 0..t {
            let p = (self.pos + i) as f32;
            for (j, f) in self.inv_freq.iter().enumerate() {
                let a = f * p;
                cos[i * half + j] = a.cos();
                sin[i * half + j] = a.sin();
            }
        }
        for r in &mut self.rings {
            r.reserve(self.win.context, t, self.pos);
        }
    }

    /// Layer `li` over every stream of the chunk.
    fn layer(
        isa: Isa,
        li: usize,
        lw: &LayerWeights,
        lanes: &mut [(&mut Transformer, &mut [f32])],
        prof: &mut Prof,
    ) {
        let d = lw.out_proj.n;
        let f = lw.linear1.n;
        let mut t0 = Instant::now();
        for (tr, x) in lanes.iter_mut() {
            let t = x.len() / d;
            layer_norm(x, &lw.norm1, grow(&mut tr.s.hx, t * d));
            grow(&mut tr.s.qkv, t * 3 * d);
            grow(&mut tr.s.ff, t * f);
        }
        t0 = prof.lap(Kind::Norm, t0);
        let mut jobs = Jobs::new();
        for (tr, x) in lanes.iter_mut() {
            let t = x.len() / d;
            let Scratch { hx, qkv, .. } = &mut tr.s;
            jobs.push(&hx[..t * d], t, &mut qkv[..t * 3 * d]);
        }
        gemm_jobs(isa, &jobs, dense(d, d), &lw.in_proj, 3 * d, Epi::Store);
        t0 = prof.lap(Kind::Linear, t0);
        for (tr, x) in lanes.iter_mut() {
            tr.attend(li, x.len() / d);
        }
        t0 = prof.lap(Kind::Attention, t0);
        let mut jobs = Jobs::new();
        for (tr, x) in lanes.iter_mut() {
            let t = x.len() / d;
            jobs.push(&tr.s.att[..t * d], t, x);
        }
        let epi = Epi::AddScaled(&lw.scale1);
        gemm_jobs(isa, &jobs, dense(d, d), &lw.out_proj, d, epi);
        prof.lap(Kind::Linear, t0);
        Self::feed_forward(isa, lw, lanes, prof);
    }

    /// The layer's second half over every stream: norm, feed-forward, scaled residual.
    fn feed_forward(
        isa: Isa,
        lw: &LayerWeights,
        lanes: &mut [(&mut Transformer, &mut [f32])],
        prof: &mut Prof,
    ) {
        let (d, f) = (lw.out_proj.n, lw.linear1.n);
        let mut t0 = Instant::now();
        for (tr, x) in lanes.iter_mut() {
            layer_norm(x, &lw.norm2, &mut tr.s.hx[..x.len()]);
        }
        t0 = prof.lap(Kind::Norm, t0);
        let mut jobs = Jobs::new();
        for (tr, x) in lanes.iter_mut() {
            let t = x.len() / d;
            let Scratch { hx, ff, .. } = &mut tr.s;
            jobs.push(&hx[..t * d], t, &mut ff[..t * f]);
        }
        gemm_jobs(isa, &jobs, dense(d, d), &lw.linear1, f, Epi::Store);
        t0 = prof.lap(Kind::Linear, t0);
        for (tr, x) in lanes.iter_mut() {
            let t = x.len() / d;
            pool::par_chunks(t, (&mut tr.s.ff[..t * f], f), (&mut [], 0), &|_, row, _| {
                row.iter_mut().for_each(|v| *v = gelu(*v));
            });
        }
        t0 = prof.lap(Kind::Norm, t0);
        let mut jobs = Jobs::new();
        for (tr, x) in lanes.iter_mut() {
            let t = x.len() / d;
            jobs.push(&tr.s.ff[..t * f], t, x);
        }
        let epi = Epi::AddScaled(&lw.scale2);
        gemm_jobs(isa, &jobs, dense(f, f), &lw.linear2, d, epi);
        prof.lap(Kind::Linear, t0);
    }

    /// RoPE on this call's queries and keys (`s.qkv`), the keys and values into layer `li`'s
    /// ring, and attention of the `t` queries into `s.att`.
    fn attend(&mut self, li: usize, t: usize) {
        let d = self.d;
        let s = &mut self.s;
        let qkv = &mut s.qkv[..t * 3 * d];
        let att = grow(&mut s.att, t * d);
        let half = self.inv_freq.len();
        for i in 0..t {
            let row = &mut qkv[i * 3 * d..(i + 1) * 3 * d];
            let (cos, sin) = (
                &s.cos[i * half..(i + 1) * half],
                &s.sin[i * half..(i + 1) * half],
            );
            for h in 0..self.win.heads {
                let o = h * self.win.head_dim;
                rope(&mut row[o..o + self.win.head_dim], cos, sin);
                rope(&mut row[d + o..d + o + self.win.head_dim], cos, sin);
            }
            self.rings[li].push(self.pos + i, &row[d..2 * d], &row[2 * d..]);
        }
        // One task per head over all the queries, with its own scratch: `hout` is
        // `[H, T, Dh]`, gathered into `att` (`[T, H * Dh]`) after.
        let (win, pos, ring, qkv) = (self.win, self.pos, &self.rings[li], &*qkv);
        let (heads, dh) = (win.heads, win.head_dim);
        let per_head = t * (win.context + t);
        let hout = grow(&mut s.hout, t * d);
        let scores = grow(&mut s.scores, heads * per_head);
        pool::par_chunks(heads, (hout, t * dh), (scores, per_head), &|h, out, sc| {
            attend_head(ring, win, pos, h, &qkv[h * dh..], 3 * d, out, sc);
        });
        for (h, ho) in hout.chunks_exact(t * dh).enumerate() {
            for (i, src) in ho.chunks_exact(dh).enumerate() {
                att[i * d + h * dh..][..dh].copy_from_slice(src);
            }
        }
    }
}

/// candle's fused LayerNorm (one pass for mean and mean square), row by row.
fn layer_norm(x: &[f32], (w, b): &(Vec<f32>, Vec<f32>), out: &mut [f32]) {
    let d = w.len();
    for (src, dst) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
        let (mut sum, mut sum2) = (0f32, 0f32);
        for &v in src {
            sum += v;
            sum2 += v * v;
        }
        let mean = sum / d as f32;
        let var = sum2 / d as f32 - mean * mean;
        let inv_std = (var + 1e-5).sqrt().recip();
        for (((o, &s), &w), &b) in dst.iter_mut().zip(src).zip(w).zip(b) {
            *o = (s - mean) * inv_std * w + b;
        }
    }
}

/// Interleaved-pair rotation (candle's `rope_i`) of one head.
fn rope(x: &mut [f32], cos: &[f32], sin: &[f32]) {
    for (p, (&c, &s)) in x.chunks_exact_mut(2).zip(cos.iter().zip(sin)) {
        let (a, b) = (p[0], p[1]);
        p[0] = a * c - b * s;
        p[1] = a * s + b * c;
    }
}

/// Exact GELU, `x * (1 + erf(x / sqrt 2)) / 2`, as candle's `gelu_erf`.
fn gelu(x: f32) -> f32 {
    (candle_core::cpu::erf::erf_f32(x * std::f32::consts::FRAC_1_SQRT_2) + 1.0) * 0.5 * x
}
