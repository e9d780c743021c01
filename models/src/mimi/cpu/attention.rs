//! Causal attention over a per-layer ring of past keys and values, with the reference's
//! limited context: a query at position `p` of a frame ending at `e` (frames are
//! `granularity` steps) sees the keys at positions `max(0, e - context) ..= p`.

/// Keys and values of one layer: position `p` lives in slot `p % cap`.
#[derive(Debug, Clone)]
pub(crate) struct KvRing {
    k: Vec<f32>,
    v: Vec<f32>,
    cap: usize,
    d: usize,
}

impl KvRing {
    pub(crate) fn new(d: usize) -> KvRing {
        KvRing {
            k: Vec::new(),
            v: Vec::new(),
            cap: 0,
            d,
        }
    }

    /// Makes room for `context + t` positions, keeping the last `context` before `pos`
    /// (allocates only when a call is longer than any before).
    pub(crate) fn reserve(&mut self, context: usize, t: usize, pos: usize) {
        let need = context + t;
        if self.cap >= need {
            return;
        }
        let d = self.d;
        let mut k = vec![0f32; need * d];
        let mut v = vec![0f32; need * d];
        for p in pos.saturating_sub(context)..pos {
            let (src, dst) = ((p % self.cap) * d, (p % need) * d);
            k[dst..dst + d].copy_from_slice(&self.k[src..src + d]);
            v[dst..dst + d].copy_from_slice(&self.v[src..src + d]);
        }
        (self.k, self.v, self.cap) = (k, v, need);
    }

    /// Stores the key and value rows of position `p`.
    pub(crate) fn push(&mut self, p: usize, k: &[f32], v: &[f32]) {
        let o = (p % self.cap) * self.d;
        self.k[o..o + self.d].copy_from_slice(k);
        self.v[o..o + self.d].copy_from_slice(v);
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

/// For head `h` of the query at position `qp` (`qh`: `[Dh]`, rotated): `out` (`[Dh]`) =
/// softmax(qh.k / sqrt(Dh)) weighted values. `scores` is scratch of at least `context + 1`.
pub(crate) fn attend_head(
    ring: &KvRing,
    win: Window,
    qp: usize,
    h: usize,
    qh: &[f32],
    out: &mut [f32],
    scores: &mut [f32],
) {
    let dh = win.head_dim;
    let lo = win.first_key(qp);
    let n = qp + 1 - lo;
    let scale = 1.0 / (dh as f32).sqrt();
    let s = &mut scores[..n];
    let mut max = f32::NEG_INFINITY;
    for (j, sj) in s.iter_mut().enumerate() {
        let o = ((lo + j) % ring.cap) * ring.d + h * dh;
        *sj = dot(qh, &ring.k[o..o + dh]) * scale;
        max = max.max(*sj);
    }
    let mut sum = 0f32;
    for sj in s.iter_mut() {
        *sj = (*sj - max).exp();
        sum += *sj;
    }
    out.fill(0.0);
    for (j, &sj) in s.iter().enumerate() {
        let p = sj / sum;
        let o = ((lo + j) % ring.cap) * ring.d + h * dh;
        for (y, &v) in out.iter_mut().zip(&ring.v[o..o + dh]) {
            *y += p * v;
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
