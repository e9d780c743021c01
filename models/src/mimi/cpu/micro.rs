//! The matrix micro-kernel: up to [`MR`] rows of activations times one packed panel
//! ([`NB`] columns), accumulated over the whole reduction.
//!
//! The reduction may be split in `taps` segments of `len` contiguous values (a dilated
//! convolution reads its taps `dilation` rows apart); every version accumulates element
//! `q = tap * len + i` in increasing `q`, one multiply-add per element and output, so the
//! vector versions give the generic version's bits (see [`super::isa`]).

use super::isa::{madd, Isa};
use super::packed::NB;

/// Rows per block (6 x 16 outputs keep 12 AVX2 or 24 NEON accumulators in registers).
pub(crate) const MR: usize = 6;

/// Where a block's activations are: row `r`, reduction index `t * len + i` is at
/// `rows[r][t * tap_stride + i]` for the block's row pointers (`rows[r] = a + r * lda` for one
/// matrix; rows of several streams' matrices can share a block).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Geom {
    pub(crate) lda: usize,
    pub(crate) taps: usize,
    pub(crate) len: usize,
    pub(crate) tap_stride: usize,
}

impl Geom {
    /// Reduction length.
    pub(crate) fn depth(&self) -> usize {
        self.taps * self.len
    }
}

/// A panel's first entry.
#[derive(Debug, Clone, Copy)]
pub(crate) enum PanelPtr {
    F32(*const f32),
    F16(*const u16),
}

/// Blocks of at most this many rows are memory-bound: the vector kernels prefetch their panel.
const PREFETCH_ROWS: usize = 3;
/// How far ahead of the panel row being read the prefetch reaches. Measured on full-size Mimi
/// with the weights on huge pages (x86-64, 4 rounds): 512 B gave linears 12.0 ms per frame,
/// none 12.3 ms, 2048 B 12.9 ms; further ahead, the hints evict lines not yet used.
const PREFETCH_BYTES: usize = 512;

/// Block accumulators, row-major.
pub(crate) type Acc = [[f32; NB]; MR];

/// Each row's first activation (reduction index 0) in a block.
pub(crate) type Rows = [*const f32; MR];

/// The rows of a block of one matrix, `lda` apart from `a` (only the first `n` are read).
#[cfg(test)]
pub(crate) fn rows_of(a: *const f32, lda: usize, n: usize) -> Rows {
    let mut r = [a; MR];
    for (i, p) in r.iter_mut().enumerate().take(n) {
        *p = a.wrapping_add(i * lda);
    }
    r
}

/// Computes `rows` (1..=MR) rows of one panel into `acc[..rows]`.
///
/// # Safety
/// For every `r < rows` and reduction index `q`, `a[r] + t * tap_stride + i` must be
/// readable, and the panel must hold `g.depth() * NB` entries.
pub(crate) unsafe fn block(isa: Isa, rows: usize, a: &Rows, g: Geom, p: PanelPtr, acc: &mut Acc) {
    macro_rules! by_rows {
        ($f:ident $(, $extra:tt)*) => {
            match rows {
                6 => $f::<6 $(, $extra)*>(a, g, p, acc),
                5 => $f::<5 $(, $extra)*>(a, g, p, acc),
                4 => $f::<4 $(, $extra)*>(a, g, p, acc),
                3 => $f::<3 $(, $extra)*>(a, g, p, acc),
                2 => $f::<2 $(, $extra)*>(a, g, p, acc),
                _ => $f::<1 $(, $extra)*>(a, g, p, acc),
            }
        };
    }
    match isa {
        Isa::Generic => by_rows!(generic, { super::isa::FUSED }),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => by_rows!(avx2),
        #[cfg(target_arch = "aarch64")]
        Isa::Neon => by_rows!(neon),
    }
}

/// The generic fused variant, for tests comparing bits with the vector paths on x86-64.
///
/// # Safety
/// As [`block`].
#[cfg(test)]
pub(crate) unsafe fn block_generic_fused(
    rows: usize,
    a: &Rows,
    g: Geom,
    p: PanelPtr,
    acc: &mut Acc,
) {
    match rows {
        6 => generic::<6, true>(a, g, p, acc),
        5 => generic::<5, true>(a, g, p, acc),
        4 => generic::<4, true>(a, g, p, acc),
        3 => generic::<3, true>(a, g, p, acc),
        2 => generic::<2, true>(a, g, p, acc),
        _ => generic::<1, true>(a, g, p, acc),
    }
}

#[inline(always)]
unsafe fn load_row(p: PanelPtr, q: usize) -> [f32; NB] {
    let mut w = [0f32; NB];
    match p {
        PanelPtr::F32(b) => {
            let s = std::slice::from_raw_parts(b.add(q * NB), NB);
            w.copy_from_slice(s);
        }
        PanelPtr::F16(b) => {
            let s = std::slice::from_raw_parts(b.add(q * NB), NB);
            for (d, &h) in w.iter_mut().zip(s) {
                *d = half::f16::from_bits(h).to_f32();
            }
        }
    }
    w
}

unsafe fn generic<const R: usize, const F: bool>(a: &Rows, g: Geom, p: PanelPtr, acc: &mut Acc) {
    let mut s = [[0f32; NB]; R];
    let mut q = 0;
    for t in 0..g.taps {
        let at = t * g.tap_stride;
        for i in 0..g.len {
            let w = load_row(p, q);
            q += 1;
            for (r, sr) in s.iter_mut().enumerate() {
                let x = *a[r].add(at + i);
                for (o, &wc) in sr.iter_mut().zip(&w) {
                    *o = madd::<F>(x, wc, *o);
                }
            }
        }
    }
    acc[..R].copy_from_slice(&s);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn avx2<const R: usize>(a: &Rows, g: Geom, p: PanelPtr, acc: &mut Acc) {
    use std::arch::x86_64::*;
    let mut lo = [_mm256_setzero_ps(); R];
    let mut hi = [_mm256_setzero_ps(); R];
    let mut q = 0;
    for t in 0..g.taps {
        let at = t * g.tap_stride;
        for i in 0..g.len {
            let (w0, w1) = match p {
                PanelPtr::F32(b) => {
                    let b = b.add(q * NB);
                    (_mm256_loadu_ps(b), _mm256_loadu_ps(b.add(8)))
                }
                PanelPtr::F16(b) => {
                    let b = b.add(q * NB) as *const __m128i;
                    (
                        _mm256_cvtph_ps(_mm_loadu_si128(b)),
                        _mm256_cvtph_ps(_mm_loadu_si128(b.add(1))),
                    )
                }
            };
            if R <= PREFETCH_ROWS {
                // Few rows: the kernel streams the panel from memory; ask for it ahead.
                let ahead = match p {
                    PanelPtr::F32(b) => b.add(q * NB) as *const i8,
                    PanelPtr::F16(b) => b.add(q * NB) as *const i8,
                };
                _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(PREFETCH_BYTES));
            }
            q += 1;
            for r in 0..R {
                let x = _mm256_broadcast_ss(&*a[r].add(at + i));
                lo[r] = _mm256_fmadd_ps(x, w0, lo[r]);
                hi[r] = _mm256_fmadd_ps(x, w1, hi[r]);
            }
        }
    }
    for r in 0..R {
        _mm256_storeu_ps(acc[r].as_mut_ptr(), lo[r]);
        _mm256_storeu_ps(acc[r].as_mut_ptr().add(8), hi[r]);
    }
}

#[cfg(target_arch = "aarch64")]
#[target_feature(enable = "neon")]
unsafe fn neon<const R: usize>(a: &Rows, g: Geom, p: PanelPtr, acc: &mut Acc) {
    use std::arch::aarch64::*;
    let z = vdupq_n_f32(0.0);
    let mut s = [[z; 4]; R];
    let mut q = 0;
    for t in 0..g.taps {
        let at = t * g.tap_stride;
        for i in 0..g.len {
            let w = match p {
                PanelPtr::F32(b) => {
                    let b = b.add(q * NB);
                    [
                        vld1q_f32(b),
                        vld1q_f32(b.add(4)),
                        vld1q_f32(b.add(8)),
                        vld1q_f32(b.add(12)),
                    ]
                }
                PanelPtr::F16(b) => {
                    let b = b.add(q * NB);
                    let (w0, w1) = super::neon_asm::widen8(vld1q_u16(b));
                    let (w2, w3) = super::neon_asm::widen8(vld1q_u16(b.add(8)));
                    [w0, w1, w2, w3]
                }
            };
            if R <= PREFETCH_ROWS {
                // Few rows: the kernel streams the panel from memory; ask for it ahead.
                let ahead = match p {
                    PanelPtr::F32(b) => b.add(q * NB) as *const i8,
                    PanelPtr::F16(b) => b.add(q * NB) as *const i8,
                };
                super::neon_asm::prefetch(ahead.wrapping_add(PREFETCH_BYTES));
            }
            q += 1;
            for r in 0..R {
                let x = vdupq_n_f32(*a[r].add(at + i));
                for c in 0..4 {
                    s[r][c] = vfmaq_f32(s[r][c], x, w[c]);
                }
            }
        }
    }
    for r in 0..R {
        for c in 0..4 {
            vst1q_f32(acc[r].as_mut_ptr().add(4 * c), s[r][c]);
        }
    }
}
