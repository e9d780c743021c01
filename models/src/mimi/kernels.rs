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

/// A weight `[K, N]` ready for `x [M, K] @ w`. On CPU it is packed once, at load, into panels of
/// `NB` columns stored contiguously (`[N / NB][K][NB]`, last panel zero-padded), so that the
/// kernel streams it sequentially; elsewhere it is the plain `[K, N]` tensor for candle.
#[derive(Debug, Clone)]
pub(crate) struct Packed {
    data: Tensor,
    k: usize,
    n: usize,
}

impl Packed {
    /// `wt`: `[K, N]`.
    pub(crate) fn new(wt: &Tensor) -> Result<Self> {
        let (k, n) = wt.dims2()?;
        if !wt.device().is_cpu() {
            return Ok(Self {
                data: wt.contiguous()?,
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
            k,
            n,
        })
    }

    /// `x [M, K] -> [M, N]`.
    pub(crate) fn mm(&self, x: &Tensor) -> Result<Tensor> {
        if x.device().is_cpu() {
            self.mm_t(x)?.t()?.contiguous()
        } else {
            x.matmul(&self.data)
        }
    }

    /// `x [M, K] -> [N, M]` (the `[C, T]` layout of convolutions).
    pub(crate) fn mm_t(&self, x: &Tensor) -> Result<Tensor> {
        if x.device().is_cpu() {
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
