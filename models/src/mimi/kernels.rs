//! Small-batch matrix products for streaming on CPU.
//!
//! A streaming step multiplies only a few rows (1-16 time steps) by large weight matrices.
//! General GEMM libraries repack the whole weight matrix on every call, which costs as much as
//! the product itself at that size; these kernels read each weight once, in the layout it is
//! stored in after loading (`[K, N]`, pre-transposed), and split the columns across threads.
//! On other devices, and for many rows, the ordinary candle matmul/conv runs instead.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Output columns per packed panel (two 8-lane vectors).
const NB: usize = 16;

/// A weight `[K, N]` ready for `x [M, K] @ w`. On CPU, when streaming multiplies few rows
/// (`M <= SMALL_M`), it is packed once, at load, into panels of `NB` columns stored
/// contiguously (`[N / NB][K][NB]`, last panel zero-padded) so the kernel streams it
/// sequentially; otherwise it stays a plain `[K, N]` tensor for candle's matmul.
#[derive(Debug, Clone)]
pub(crate) struct Packed {
    data: Tensor,
    panels: bool,
    k: usize,
    n: usize,
}

/// Rows up to which the packed kernel beats candle's GEMM (measured on 2 cores).
const SMALL_M: usize = 16;

impl Packed {
    /// `wt`: `[K, N]`; `rows`: rows per call when streaming (decides the layout).
    pub(crate) fn new(wt: &Tensor, rows: usize) -> Result<Self> {
        let (k, n) = wt.dims2()?;
        // The packed kernels are f32-only; half precision takes candle's ops, as on CUDA.
        if !wt.device().is_cpu() || wt.dtype() != candle_core::DType::F32 || rows > SMALL_M {
            return Ok(Self {
                data: wt.contiguous()?,
                panels: false,
                k,
                n,
            });
        }
        let src: Vec<f32> = wt.flatten_all()?.to_vec1()?;
        let panels = n.div_ceil(NB);
        let mut packed = vec![0f32; panels * k * NB];
        for (p, panel) in packed.chunks_exact_mut(k * NB).enumerate() {
            let j0 = p * NB;
            let cols = NB.min(n - j0);
            for (i, dst) in panel.chunks_exact_mut(NB).enumerate() {
                dst[..cols].copy_from_slice(&src[i * n + j0..i * n + j0 + cols]);
            }
        }
        Ok(Self {
            data: Tensor::from_vec(packed, panels * k * NB, wt.device())?,
            panels: true,
            k,
            n,
        })
    }

    /// `x [M, K] -> [M, N]`.
    pub(crate) fn mm(&self, x: &Tensor) -> Result<Tensor> {
        if self.panels {
            self.mm_t(x)?.t()?.contiguous()
        } else {
            x.matmul(&self.data)
        }
    }

    /// `x [M, K] -> [N, M]` (the `[C, T]` layout of convolutions).
    pub(crate) fn mm_t(&self, x: &Tensor) -> Result<Tensor> {
        if self.panels {
            x.contiguous()?.apply_op2_no_bwd(
                &self.data,
                &PackedMm {
                    k: self.k,
                    n: self.n,
                },
            )
        } else {
            x.matmul(&self.data)?.t()?.contiguous()
        }
    }
}

/// Unfolds `x [C_in, L]` for a convolution of kernel `k`: returns `[T_out, C_in * k]`.
pub(crate) fn im2col(x: &Tensor, k: usize, stride: usize, dilation: usize) -> Result<Tensor> {
    x.contiguous()?.apply_op1_no_bwd(&Im2Col {
        k,
        stride,
        dilation,
    })
}

struct Im2Col {
    k: usize,
    stride: usize,
    dilation: usize,
}

impl CustomOp1 for Im2Col {
    fn name(&self) -> &'static str {
        "mimi-im2col"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = slice(s, l)?;
        let (c_in, len) = l.shape().dims2()?;
        let eff = (self.k - 1) * self.dilation + 1;
        if len < eff {
            candle_core::bail!("im2col: input length {len} shorter than kernel {eff}");
        }
        let t_out = (len - eff) / self.stride + 1;
        let kk = c_in * self.k;
        let mut cols = vec![0f32; t_out * kk];
        for (t, row) in cols.chunks_exact_mut(kk).enumerate() {
            for c in 0..c_in {
                let src = &x[c * len + t * self.stride..(c + 1) * len];
                let dst = &mut row[c * self.k..(c + 1) * self.k];
                for (j, d) in dst.iter_mut().enumerate() {
                    *d = src[j * self.dilation];
                }
            }
        }
        Ok((CpuStorage::F32(cols), Shape::from((t_out, kk))))
    }
}

/// Computes `(x @ w)^T` as `[N, M]` from a packed weight.
struct PackedMm {
    k: usize,
    n: usize,
}

fn slice<'a>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    let data = s.as_slice::<f32>()?;
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => candle_core::bail!("small matmul: operand must be contiguous"),
    }
}

impl CustomOp2 for PackedMm {
    fn name(&self) -> &'static str {
        "mimi-packed-matmul"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = slice(s1, l1)?;
        let w = slice(s2, l2)?;
        let (m, k) = l1.shape().dims2()?;
        if k != self.k || w.len() != self.n.div_ceil(NB) * k * NB {
            candle_core::bail!(
                "packed matmul: input [{m}, {k}] vs weight [{}, {}]",
                self.k,
                self.n
            );
        }
        let mut yt = vec![0f32; self.n * m];
        packed_mm_t(x, m, k, w, self.n, &mut yt);
        Ok((CpuStorage::F32(yt), Shape::from((self.n, m))))
    }
}

/// `yt[j * m + r] = sum_i x[r * k + i] * w[i, j]`, `w` packed in panels.
fn packed_mm_t(x: &[f32], m: usize, k: usize, w: &[f32], n: usize, yt: &mut [f32]) {
    // The 4-row kernel streams weights far better than the 2- and 3-row ones; pad the rows to
    // a multiple of 4 (zeros) and drop the extra outputs.
    if m > 1 && !m.is_multiple_of(4) {
        let m4 = m.div_ceil(4) * 4;
        let mut xp = vec![0f32; m4 * k];
        xp[..m * k].copy_from_slice(&x[..m * k]);
        let mut yp = vec![0f32; n * m4];
        packed_mm_t(&xp, m4, k, w, n, &mut yp);
        for (dst, src) in yt.chunks_exact_mut(m).zip(yp.chunks_exact(m4)) {
            dst.copy_from_slice(&src[..m]);
        }
        return;
    }
    let fast = has_fma();
    let work = |(p, out): (usize, &mut [f32])| {
        let cols = NB.min(n - p * NB);
        let panel = &w[p * k * NB..(p + 1) * k * NB];
        let mut r = 0;
        while r < m {
            let rows = 4.min(m - r);
            block(fast, rows, &x[r * k..], k, panel, cols, out, r, m);
            r += rows;
        }
    };
    // Threads only pay off when there is enough work per call.
    if m * k * n >= 1 << 16 {
        yt.par_chunks_mut(NB * m).enumerate().for_each(work);
    } else {
        yt.chunks_mut(NB * m).enumerate().for_each(work);
    }
}

#[cfg(target_arch = "x86_64")]
fn has_fma() -> bool {
    use std::sync::OnceLock;
    static FMA: OnceLock<bool> = OnceLock::new();
    *FMA.get_or_init(|| is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"))
}

#[cfg(not(target_arch = "x86_64"))]
fn has_fma() -> bool {
    false
}

#[allow(clippy::too_many_arguments)]
fn block(
    fast: bool,
    rows: usize,
    x: &[f32],
    k: usize,
    panel: &[f32],
    cols: usize,
    out: &mut [f32],
    r0: usize,
    m: usize,
) {
    #[cfg(target_arch = "x86_64")]
    if fast {
        // SAFETY: `fast` is true only when AVX2 and FMA were detected at run time.
        unsafe {
            match rows {
                4 => block_avx2::<4>(x, k, panel, cols, out, r0, m),
                3 => block_avx2::<3>(x, k, panel, cols, out, r0, m),
                2 => block_avx2::<2>(x, k, panel, cols, out, r0, m),
                _ => block_avx2::<1>(x, k, panel, cols, out, r0, m),
            }
        }
        return;
    }
    let _ = fast;
    // aarch64 always has fused multiply-add; elsewhere fall back to separate mul + add.
    const FUSED: bool = cfg!(target_arch = "aarch64");
    match rows {
        4 => block_generic::<4, FUSED>(x, k, panel, cols, out, r0, m),
        3 => block_generic::<3, FUSED>(x, k, panel, cols, out, r0, m),
        2 => block_generic::<2, FUSED>(x, k, panel, cols, out, r0, m),
        _ => block_generic::<1, FUSED>(x, k, panel, cols, out, r0, m),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn block_avx2<const R: usize>(
    x: &[f32],
    k: usize,
    panel: &[f32],
    cols: usize,
    out: &mut [f32],
    r0: usize,
    m: usize,
) {
    block_generic::<R, true>(x, k, panel, cols, out, r0, m)
}

/// `R` rows x one panel (`NB` columns, `cols` of them real), accumulated over all of `k`. Fixed-size arrays let the
/// compiler keep the accumulators in vector registers.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn block_generic<const R: usize, const FUSED: bool>(
    x: &[f32],
    k: usize,
    panel: &[f32],
    cols: usize,
    out: &mut [f32],
    r0: usize,
    m: usize,
) {
    let mut acc = [[0f32; NB]; R];
    for (i, w) in panel.chunks_exact(NB).take(k).enumerate() {
        let w: &[f32; NB] = match w.try_into() {
            Ok(w) => w,
            Err(_) => return,
        };
        for r in 0..R {
            let a = x[r * k + i];
            for c in 0..NB {
                acc[r][c] = fma::<FUSED>(a, w[c], acc[r][c]);
            }
        }
    }
    for (r, row) in acc.iter().enumerate() {
        for c in 0..cols {
            out[c * m + r0 + r] = row[c];
        }
    }
}

#[inline(always)]
fn fma<const FUSED: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FUSED {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn rand(shape: (usize, usize), seed: u64) -> Tensor {
        // A cheap deterministic fill; values in [-1, 1).
        let n = shape.0 * shape.1;
        let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
        let v: Vec<f32> = (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    #[test]
    fn packed_matmul_matches_candle() {
        for &(m, k, n) in &[
            (1, 7, 1),
            (2, 64, 16),
            (3, 33, 17),
            (5, 100, 50),
            (16, 256, 512),
            (40, 96, 35),
        ] {
            let x = rand((m, k), 1);
            let w = rand((k, n), 2);
            let want: Vec<Vec<f32>> = x.matmul(&w).unwrap().to_vec2().unwrap();
            let p = Packed::new(&w, m).unwrap();
            let got: Vec<Vec<f32>> = p.mm(&x).unwrap().to_vec2().unwrap();
            let got_t: Vec<Vec<f32>> = p.mm_t(&x).unwrap().to_vec2().unwrap();
            for r in 0..m {
                for c in 0..n {
                    let d = (want[r][c] - got[r][c]).abs();
                    assert!(
                        d <= 1e-4 * (1.0 + want[r][c].abs()),
                        "({m},{k},{n}) [{r},{c}]"
                    );
                    assert_eq!(got[r][c], got_t[c][r]);
                }
            }
        }
    }

    #[test]
    fn im2col_matches_candle_conv() {
        let (c_in, c_out, k, stride, dil, len) = (3, 5, 4, 2, 3, 21);
        let x = rand((c_in, len), 3);
        let w = rand((c_out, c_in * k), 4);
        let want: Vec<Vec<f32>> = x
            .unsqueeze(0)
            .unwrap()
            .conv1d(&w.reshape((c_out, c_in, k)).unwrap(), 0, stride, dil, 1)
            .unwrap()
            .squeeze(0)
            .unwrap()
            .to_vec2()
            .unwrap();
        let cols = im2col(&x, k, stride, dil).unwrap();
        let got: Vec<Vec<f32>> = Packed::new(&w.t().unwrap(), 1)
            .unwrap()
            .mm_t(&cols)
            .unwrap()
            .to_vec2()
            .unwrap();
        assert_eq!(want.len(), got.len());
        for (a, b) in want.iter().flatten().zip(got.iter().flatten()) {
            assert!((a - b).abs() <= 1e-5, "{a} vs {b}");
        }
    }
}
