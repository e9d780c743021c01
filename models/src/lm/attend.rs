//! One query against a ring of keys and values, every head, on the CPU in f32.
//!
//! Why not candle's matmuls: once the window is full (after 4 minutes of conversation at
//! context 3000) each temporal step reads the whole KV cache, 3.15 GB for the 7B model,
//! which is as much as a third of the weights. Two batched GEMVs plus a softmax through
//! candle read it at about two thirds of the memory bandwidth and allocate the score
//! tensors every layer; this reads each key and value row once, in place, with the scores
//! in a reused per-thread buffer, heads split over rayon.

use rayon::prelude::*;

thread_local! {
    static SCORES: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// `out[h] = softmax(q[h] . k[h, j] * scale for j < len) . v[h, j]` for each head `h`.
///
/// `q`, `out`: `[heads, d]`; `k`, `v`: `[heads, cap, d]` of which the first `len` rows of
/// each head are valid (ring order does not matter: positions are inside the keys).
#[allow(clippy::too_many_arguments)]
pub(crate) fn attend_one(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    cap: usize,
    len: usize,
    d: usize,
    scale: f32,
    out: &mut [f32],
) {
    let heads = out.len() / d;
    debug_assert_eq!(q.len(), heads * d);
    debug_assert!(k.len() >= heads * cap * d && v.len() >= heads * cap * d);
    debug_assert!(len >= 1 && len <= cap);
    let head = |(h, o): (usize, &mut [f32])| {
        let kh = &k[h * cap * d..(h * cap + len) * d];
        let vh = &v[h * cap * d..(h * cap + len) * d];
        let qh = &q[h * d..(h + 1) * d];
        SCORES.with(|cell| {
            let mut s = cell.borrow_mut();
            s.resize(len, 0.0);
            #[cfg(target_arch = "x86_64")]
            if super::cpu::has_avx2_fma() {
                // SAFETY: the CPU has AVX2 and FMA (checked just above).
                unsafe { one_head_avx2(qh, kh, vh, d, scale, &mut s, o) };
                return;
            }
            one_head(qh, kh, vh, d, scale, &mut s, o, dot);
        });
    };
    // Splitting is only worth it when there is enough to read.
    if heads > 1 && len * d * heads >= 1 << 15 {
        out.par_chunks_mut(d).enumerate().for_each(head);
    } else {
        out.chunks_mut(d).enumerate().for_each(head);
    }
}

/// [`one_head`] compiled for AVX2, with [`dot_avx2`] for the scores.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn one_head_avx2(
    qh: &[f32],
    kh: &[f32],
    vh: &[f32],
    d: usize,
    scale: f32,
    s: &mut [f32],
    o: &mut [f32],
) {
    // SAFETY: this function only runs where AVX2 and FMA are present.
    one_head(qh, kh, vh, d, scale, s, o, |a, b| unsafe { dot_avx2(a, b) })
}

/// [`dot`] with explicit AVX2: four 8-wide FMA accumulators.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let n = a.len().min(b.len());
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut i = 0;
    // SAFETY: every load reads 8 floats below `n`.
    unsafe {
        while i + 32 <= n {
            for (r, acc) in acc.iter_mut().enumerate() {
                let x = _mm256_loadu_ps(pa.add(i + 8 * r));
                let y = _mm256_loadu_ps(pb.add(i + 8 * r));
                *acc = _mm256_fmadd_ps(x, y, *acc);
            }
            i += 32;
        }
        while i + 8 <= n {
            acc[0] = _mm256_fmadd_ps(
                _mm256_loadu_ps(pa.add(i)),
                _mm256_loadu_ps(pb.add(i)),
                acc[0],
            );
            i += 8;
        }
    }
    let v = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
    let tail: f32 = a[i..n].iter().zip(&b[i..n]).map(|(x, y)| x * y).sum();
    super::cpu::hsum8(v) + tail
}

/// One head: scores of `qh` against the `s.len()` keys in `kh`, softmax, weighted sum of
/// the values in `vh` into `o`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn one_head(
    qh: &[f32],
    kh: &[f32],
    vh: &[f32],
    d: usize,
    scale: f32,
    s: &mut [f32],
    o: &mut [f32],
    dot: impl Fn(&[f32], &[f32]) -> f32,
) {
    // Each row is read once, front to back: prefetch the one AHEAD bytes on.
    for (j, (sj, kj)) in s.iter_mut().zip(kh.chunks_exact(d)).enumerate() {
        prefetch(kh, j * d * 4 + AHEAD, d * 4);
        *sj = dot(qh, kj) * scale;
    }
    let max = s.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0f32;
    for sj in s.iter_mut() {
        *sj = (*sj - max).exp();
        sum += *sj;
    }
    let inv = 1.0 / sum;
    o.fill(0.0);
    // Four value rows per pass over `o`: a quarter of the loads and stores of `o`.
    let (s4, s_rest) = s.split_at(s.len() / 4 * 4);
    let (v4, v_rest) = vh.split_at(s4.len() * d);
    for (i, (sj, vj)) in s4.chunks_exact(4).zip(v4.chunks_exact(4 * d)).enumerate() {
        prefetch(vh, i * 4 * d * 4 + AHEAD, 4 * d * 4);
        let (a, b) = vj.split_at(2 * d);
        let (v0, v1) = a.split_at(d);
        let (v2, v3) = b.split_at(d);
        let p = [sj[0] * inv, sj[1] * inv, sj[2] * inv, sj[3] * inv];
        for ((((oi, x0), x1), x2), x3) in o.iter_mut().zip(v0).zip(v1).zip(v2).zip(v3) {
            *oi += p[0] * x0 + p[1] * x1 + p[2] * x2 + p[3] * x3;
        }
    }
    for (sj, vj) in s_rest.iter().zip(v_rest.chunks_exact(d)) {
        axpy(sj * inv, vj, o);
    }
}

/// How far ahead of the row being read to prefetch (bytes).
const AHEAD: usize = 2048;

/// Prefetches `len` bytes of `xs` from byte `at` (see [`super::cpu::prefetch`]).
#[inline(always)]
fn prefetch(xs: &[f32], at: usize, len: usize) {
    super::cpu::prefetch((xs.as_ptr() as *const u8).wrapping_add(at), len);
}

/// Dot product with four 8-wide partial sums (no long chain of dependent adds), reduced
/// as a tree; vectorizes without fast-math.
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [[0f32; 8]; 4];
    let ca = a.chunks_exact(32);
    let cb = b.chunks_exact(32);
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for (r, acc) in acc.iter_mut().enumerate() {
            for i in 0..8 {
                acc[i] += x[r * 8 + i] * y[r * 8 + i];
            }
        }
    }
    let mut v = [0f32; 8];
    for i in 0..8 {
        v[i] = (acc[0][i] + acc[1][i]) + (acc[2][i] + acc[3][i]);
    }
    let h = [v[0] + v[4], v[1] + v[5], v[2] + v[6], v[3] + v[7]];
    (h[0] + h[2]) + (h[1] + h[3]) + tail
}

/// `o += a * x`.
#[inline(always)]
fn axpy(a: f32, x: &[f32], o: &mut [f32]) {
    for (oi, xi) in o.iter_mut().zip(x) {
        *oi += a * xi;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against a straightforward f64 computation, with a partly filled ring.
    #[test]
    fn matches_naive() {
        let (heads, cap, len, d) = (3, 7, 5, 20);
        let f = |i: usize, m: usize| ((i * m % 97) as f32 - 48.0) / 31.0;
        let q: Vec<f32> = (0..heads * d).map(|i| f(i, 13)).collect();
        let k: Vec<f32> = (0..heads * cap * d).map(|i| f(i, 7)).collect();
        let v: Vec<f32> = (0..heads * cap * d).map(|i| f(i, 5)).collect();
        let scale = 0.3;
        let mut out = vec![0f32; heads * d];
        attend_one(&q, &k, &v, cap, len, d, scale, &mut out);
        for h in 0..heads {
            let s: Vec<f64> = (0..len)
                .map(|j| {
                    (0..d)
                        .map(|i| q[h * d + i] as f64 * k[(h * cap + j) * d + i] as f64)
                        .sum::<f64>()
                        * scale as f64
                })
                .collect();
            let m = s.iter().cloned().fold(f64::MIN, f64::max);
            let e: Vec<f64> = s.iter().map(|x| (x - m).exp()).collect();
            let z: f64 = e.iter().sum();
            for i in 0..d {
                let want: f64 = (0..len)
                    .map(|j| e[j] / z * v[(h * cap + j) * d + i] as f64)
                    .sum();
                let got = out[h * d + i] as f64;
                assert!(
                    (got - want).abs() < 1e-5,
                    "head {h} dim {i}: {got} vs {want}"
                );
            }
        }
    }
}
