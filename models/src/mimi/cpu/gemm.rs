//! `out = epilogue(A @ W)` for activations `A` (rows = time steps, read in place through a
//! [`Geom`]) and a packed weight `W`, split over the worker threads ([`super::pool`]) when
//! the product is large.
//!
//! Each output is one micro-kernel accumulation over the whole reduction, whatever the number
//! of rows or threads, so a signal processed in one call or frame by frame gives the same bits.

use super::isa::Isa;
use super::micro::{block, Acc, Geom, PanelPtr, MR};
use super::packed::{PackedMat, Panels, NB};

/// What happens to each accumulated value `v` of output column `j` before it is stored.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Epi<'a> {
    /// `out = v`.
    Store,
    /// `out = v + bias[j]`.
    Bias(&'a [f32]),
    /// `out = out + (v + bias[j])` (a residual connection after a biased layer).
    AddBias(&'a [f32]),
    /// `out = out + v * scale[j]` (a residual connection with layer scale).
    AddScaled(&'a [f32]),
    /// `out = out + v`.
    Add,
}

/// Products below this many multiply-adds run on the calling thread (a fork costs more).
const PAR_MIN: usize = 1 << 17;

/// A raw output pointer shared by the tasks of one product (they write disjoint blocks).
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: tasks write disjoint rectangles of the output; the product returns only after all
// of them finished, while the caller's `&mut` borrow is still held.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

/// Computes `m` rows: row `r` of the result goes to `out[r * ldc..][..w.n]`.
///
/// Panics when the slices are too short for the geometry (a programming error).
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm(
    isa: Isa,
    a: &[f32],
    m: usize,
    g: Geom,
    w: &PackedMat,
    out: &mut [f32],
    ldc: usize,
    epi: Epi,
) {
    if m == 0 {
        return;
    }
    assert_eq!(
        g.depth(),
        w.k,
        "gemm: reduction {} vs weight rows {}",
        g.depth(),
        w.k
    );
    let need_a = (m - 1) * g.lda + (g.taps - 1) * g.tap_stride + g.len;
    assert!(
        a.len() >= need_a,
        "gemm: {} activations, need {need_a}",
        a.len()
    );
    assert!(out.len() >= (m - 1) * ldc + w.n, "gemm: output too short");
    if let Epi::Bias(b) | Epi::AddBias(b) | Epi::AddScaled(b) = epi {
        assert!(b.len() >= w.n, "gemm: epilogue vector too short");
    }
    let np = w.num_panels();
    let o = OutPtr(out.as_mut_ptr());
    let threads = super::pool::threads();
    if m * w.k * w.n < PAR_MIN || threads < 2 {
        // SAFETY: bounds checked above; one task covers everything.
        unsafe { rect(isa, a, g, w, o, ldc, epi, 0..m, 0..np) };
        return;
    }
    // A few tasks per thread, so a thread the OS descheduled does not hold the others up.
    let want = threads * 3;
    let row_blocks = m.div_ceil(MR);
    let (pg, rg) = if np >= want {
        (want, 1)
    } else {
        (np, want.div_ceil(np).min(row_blocks))
    };
    super::pool::run(pg * rg, &|task| {
        let (pi, ri) = (task % pg, task / pg);
        let panels = np * pi / pg..np * (pi + 1) / pg;
        let rows = (row_blocks * ri / rg) * MR..((row_blocks * (ri + 1) / rg) * MR).min(m);
        // SAFETY: bounds checked above; tasks cover disjoint (rows, panels) rectangles.
        unsafe { rect(isa, a, g, w, o, ldc, epi, rows, panels) };
    });
}

/// One rectangle of the output.
///
/// # Safety
/// `gemm`'s bounds checks hold, and no other task writes these rows x panels.
#[allow(clippy::too_many_arguments)]
unsafe fn rect(
    isa: Isa,
    a: &[f32],
    g: Geom,
    w: &PackedMat,
    o: OutPtr,
    ldc: usize,
    epi: Epi,
    rows: std::ops::Range<usize>,
    panels: std::ops::Range<usize>,
) {
    let mut acc: Acc = [[0f32; NB]; MR];
    let stride = w.k * NB;
    for p in panels {
        let pp = match &w.panels {
            Panels::F32(v) => PanelPtr::F32(v.as_ptr().add(p * stride)),
            Panels::F16(v) => PanelPtr::F16(v.as_ptr().add(p * stride)),
        };
        let j0 = p * NB;
        let cols = NB.min(w.n - j0);
        let mut r = rows.start;
        while r < rows.end {
            let n = MR.min(rows.end - r);
            block(isa, n, a.as_ptr().add(r * g.lda), g, pp, &mut acc);
            store(&acc[..n], o.0.add(r * ldc + j0), ldc, j0, cols, epi);
            r += n;
        }
    }
}

/// Applies the epilogue to one block.
///
/// # Safety
/// `out` points at the block's first output; rows are `ldc` apart and `cols` wide.
#[inline(always)]
unsafe fn store(acc: &[[f32; NB]], out: *mut f32, ldc: usize, j0: usize, cols: usize, epi: Epi) {
    for (r, row) in acc.iter().enumerate() {
        let dst = std::slice::from_raw_parts_mut(out.add(r * ldc), cols);
        let v = &row[..cols];
        match epi {
            Epi::Store => dst.copy_from_slice(v),
            Epi::Bias(b) => {
                for ((d, &x), &b) in dst.iter_mut().zip(v).zip(&b[j0..j0 + cols]) {
                    *d = x + b;
                }
            }
            Epi::AddBias(b) => {
                for ((d, &x), &b) in dst.iter_mut().zip(v).zip(&b[j0..j0 + cols]) {
                    *d += x + b;
                }
            }
            Epi::AddScaled(s) => {
                for ((d, &x), &s) in dst.iter_mut().zip(v).zip(&s[j0..j0 + cols]) {
                    *d += x * s;
                }
            }
            Epi::Add => {
                for (d, &x) in dst.iter_mut().zip(v) {
                    *d += x;
                }
            }
        }
    }
}

/// A dense (single-tap) geometry: rows `lda` apart, `k` contiguous values each.
pub(crate) fn dense(lda: usize, k: usize) -> Geom {
    Geom {
        lda,
        taps: 1,
        len: k,
        tap_stride: 0,
    }
}
