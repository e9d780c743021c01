//! Causal attention over a per-layer ring of past keys and values, with the reference's
//! limited context: a query at position `p` of a frame ending at `e` (frames are
//! `granularity` steps) sees the keys at positions `max(0, e - context) ..= p`.

/// Keys and values of one layer, head by head (`[H, cap, Dh]`): position `p` of head `h` lives
/// in slot `p % cap` of that head's block, so a head's attention streams one contiguous block
/// instead of picking `Dh` values out of every `H * Dh` row.
#[derive(Debug, Clone)]
pub(crate) struct KvRing {
    k: Vec<f32>,
    v: Vec<f32>,
    cap: usize,
    heads: usize,
    dh: usize,
}

impl KvRing {
    pub(crate) fn new(heads: usize, dh: usize) -> KvRing {
        KvRing {
            k: Vec::new(),
            v: Vec::new(),
            cap: 0,
            heads,
            dh,
        }
    }

    /// Bytes held.
    pub(crate) fn bytes(&self) -> usize {
        (self.k.capacity() + self.v.capacity()) * 4
    }

    /// Offset of position `p` of head `h`.
    fn at(&self, h: usize, p: usize) -> usize {
        (h * self.cap + p % self.cap) * self.dh
    }

    /// Makes room for `context + t` positions, keeping the last `context` before `pos`
    /// (allocates only when a call is longer than any before).
    pub(crate) fn reserve(&mut self, context: usize, t: usize, pos: usize) {
        let need = context + t;
        if self.cap >= need {
            return;
        }
        let mut grown = KvRing {
            k: vec![0f32; self.heads * need * self.dh],
            v: vec![0f32; self.heads * need * self.dh],
            cap: need,
            ..*self
        };
        let dh = self.dh;
        for h in 0..self.heads {
            for p in pos.saturating_sub(context)..pos {
                let (src, dst) = (self.at(h, p), grown.at(h, p));
                grown.k[dst..dst + dh].copy_from_slice(&self.k[src..src + dh]);
                grown.v[dst..dst + dh].copy_from_slice(&self.v[src..src + dh]);
            }
        }
        *self = grown;
    }

    /// Stores the key and value rows (`[H * Dh]`) of position `p`.
    pub(crate) fn push(&mut self, p: usize, k: &[f32], v: &[f32]) {
        let dh = self.dh;
        for h in 0..self.heads {
            let o = self.at(h, p);
            self.k[o..o + dh].copy_from_slice(&k[h * dh..(h + 1) * dh]);
            self.v[o..o + dh].copy_from_slice(&v[h * dh..(h + 1) * dh]);
        }
    }
}

/// The attention window's geometry.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Window {
    pub(crate) heads: usize,
    pub(crate) head_dim: usize,
    pub(crate) context: usize,
    pub(crate) granularity: usize,
}

impl Window {
    /// First key position visible to a query at `qp`.
    fn first_key(&self, qp: usize) -> usize {
        let frame_end = (qp / self.granularity + 1) * self.granularity;
        frame_end.saturating_sub(self.context)
    }
}

/// Head `h` of the `t = out.len() / Dh` consecutive queries at `qp0..qp0 + t` (row `i` of
/// `q`, `q_stride` apart, holds query `qp0 + i`): `out` (`[t, Dh]`) = softmax(q.k / sqrt(Dh))
/// weighted values, each query over its own window. Every key and value row is read once for
/// all the queries (a frame's steps share most of their window), not once per query.
/// `scores` is scratch of at least `t * (context + t)` values.
#[allow(clippy::too_many_arguments)]
pub(crate) fn attend_head(
    ring: &KvRing,
    win: Window,
    qp0: usize,
    h: usize,
    q: &[f32],
    q_stride: usize,
    out: &mut [f32],
    scores: &mut [f32],
) {
    let dh = win.head_dim;
    let t = out.len() / dh;
    let lo = win.first_key(qp0);
    let span = qp0 + t - lo;
    // Query i sees keys lo + a..lo + b of the span.
    let range = |i: usize| (win.first_key(qp0 + i) - lo, qp0 + i + 1 - lo);
    let scale = 1.0 / (dh as f32).sqrt();
    let s = &mut scores[..t * span];
    for j in 0..span {
        let o = ring.at(h, lo + j);
        let k = &ring.k[o..o + dh];
        for i in 0..t {
            let (a, b) = range(i);
            if (a..b).contains(&j) {
                s[i * span + j] = dot(&q[i * q_stride..][..dh], k) * scale;
            }
        }
    }
    for i in 0..t {
        let (a, b) = range(i);
        let si = &mut s[i * span + a..i * span + b];
        let max = si.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
        let mut sum = 0f32;
        for v in si.iter_mut() {
            *v = (*v - max).exp();
            sum += *v;
        }
        si.iter_mut().for_each(|v| *v /= sum);
    }
    out.fill(0.0);
    for j in 0..span {
        let o = ring.at(h, lo + j);
        let v = &ring.v[o..o + dh];
        for (i, oi) in out.chunks_exact_mut(dh).enumerate() {
            let (a, b) = range(i);
            if (a..b).contains(&j) {
                let p = s[i * span + j];
                for (y, &x) in oi.iter_mut().zip(v) {
                    *y += p * x;
                }
            }
        }
    }
}

/// Dot product in eight interleaved partial sums (vectorises on every target).
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}
