//! `out = epilogue(A @ W)` for activations `A` (rows = time steps, read in place through a
//! [`Geom`]) and a packed weight `W`, split over the worker threads ([`super::pool`]) when
//! the product is large.
//!
//! Each output is one micro-kernel accumulation over the whole reduction, whatever the number
//! of rows or threads, so a signal processed in one call or frame by frame gives the same bits.

use super::isa::Isa;
use super::micro::{block, Acc, Geom, PanelPtr, Rows, MR};
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

/// Most streams one batched product takes (the codec runs larger batches in chunks of this).
pub(crate) const MAX_JOBS: usize = 16;

/// One stream's part of a batched product: `m` rows of activations read through the product's
/// [`Geom`] from `a`, results to `out` (rows `ldc` apart).
#[derive(Clone, Copy)]
struct Job {
    a: *const f32,
    m: usize,
    out: *mut f32,
}

/// The streams of one product over the same weights (at most [`MAX_JOBS`], on the stack).
pub(crate) struct Jobs<'a> {
    jobs: [Job; MAX_JOBS],
    /// Each job's activation and output lengths.
    lens: [(usize, usize); MAX_JOBS],
    n: usize,
    _borrows: std::marker::PhantomData<&'a mut [f32]>,
}

// SAFETY: the pointers come from borrows held for `'a`; tasks read the activations and write
// disjoint output rows.
unsafe impl Send for Jobs<'_> {}
unsafe impl Sync for Jobs<'_> {}

impl<'a> Jobs<'a> {
    /// No streams yet.
    pub(crate) fn new() -> Self {
        let none = Job {
            a: std::ptr::null(),
            m: 0,
            out: std::ptr::null_mut(),
        };
        Jobs {
            jobs: [none; MAX_JOBS],
            lens: [(0, 0); MAX_JOBS],
            n: 0,
            _borrows: std::marker::PhantomData,
        }
    }

    /// Adds `m` rows of `a` whose results go to `out`; the product checks both lengths.
    ///
    /// Panics beyond [`MAX_JOBS`] streams (a programming error).
    pub(crate) fn push(&mut self, a: &'a [f32], m: usize, out: &'a mut [f32]) {
        assert!(self.n < MAX_JOBS, "gemm: more than {MAX_JOBS} streams");
        // Lengths travel in the slices' checks below: keep them with the pointers.
        self.lens[self.n] = (a.len(), out.len());
        self.jobs[self.n] = Job {
            a: a.as_ptr(),
            m,
            out: out.as_mut_ptr(),
        };
        self.n += 1;
    }
}

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
    let mut jobs = Jobs::new();
    jobs.push(a, m, out);
    gemm_jobs(isa, &jobs, g, w, ldc, epi);
}

/// [`gemm`] for several streams over the same weights: each panel of `w` is read from memory
/// once and applied to every stream's rows while it is in cache. A stream's results are the
/// bits it gets alone (each output is one micro-kernel accumulation over the whole reduction).
///
/// Panics when a job's slices are too short for the geometry (a programming error).
pub(crate) fn gemm_jobs(isa: Isa, jobs: &Jobs, g: Geom, w: &PackedMat, ldc: usize, epi: Epi) {
    assert_eq!(
        g.depth(),
        w.k,
        "gemm: reduction {} vs weight rows {}",
        g.depth(),
        w.k
    );
    let mut m = 0;
    for (j, &(a_len, out_len)) in jobs.jobs[..jobs.n].iter().zip(&jobs.lens) {
        if j.m == 0 {
            continue;
        }
        let need_a = (j.m - 1) * g.lda + (g.taps - 1) * g.tap_stride + g.len;
        assert!(a_len >= need_a, "gemm: {a_len} activations, need {need_a}");
        assert!(out_len >= (j.m - 1) * ldc + w.n, "gemm: output too short");
        m += j.m;
    }
    let row_blocks = m.div_ceil(MR);
    if m == 0 {
        return;
    }
    if let Epi::Bias(b) | Epi::AddBias(b) | Epi::AddScaled(b) = epi {
        assert!(b.len() >= w.n, "gemm: epilogue vector too short");
    }
    let np = w.num_panels();
    let threads = super::pool::threads();
    if m * w.k * w.n < PAR_MIN || threads < 2 {
        // SAFETY: bounds checked above; one task covers everything.
        unsafe { rect(isa, jobs, g, w, ldc, epi, 0..row_blocks, 0..np) };
        return;
    }
    // A few tasks per thread, so a thread the OS descheduled does not hold the others up.
    let want = threads * 3;
    let (pg, rg) = if np >= want {
        (want, 1)
    } else {
        (np, want.div_ceil(np).min(row_blocks))
    };
    super::pool::run(pg * rg, &|task| {
        let (pi, ri) = (task % pg, task / pg);
        let panels = np * pi / pg..np * (pi + 1) / pg;
        let blocks = row_blocks * ri / rg..row_blocks * (ri + 1) / rg;
        // SAFETY: bounds checked above; tasks cover disjoint (row blocks, panels) rectangles.
        unsafe { rect(isa, jobs, g, w, ldc, epi, blocks, panels) };
    });
}

/// One rectangle of the output: `blocks` counts blocks of [`MR`] rows over the jobs' rows
/// in order (a block may hold the last rows of one stream and the first of the next: each
/// row's result is the same whichever block computes it).
///
/// # Safety
/// `gemm_jobs`'s bounds checks hold, and no other task writes these blocks x panels.
#[allow(clippy::too_many_arguments)]
unsafe fn rect(
    isa: Isa,
    jobs: &Jobs,
    g: Geom,
    w: &PackedMat,
    ldc: usize,
    epi: Epi,
    blocks: std::ops::Range<usize>,
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
        for b in blocks.clone() {
            let (rows, outs, n) = block_rows(jobs, b * MR, g.lda, ldc);
            block(isa, n, &rows, g, pp, &mut acc);
            store(&acc[..n], &outs, j0, cols, epi);
        }
    }
}

/// The activation and output pointers of the up to [`MR`] rows from global row `first` on
/// (the jobs' rows in order), and how many there are.
///
/// # Safety
/// `gemm_jobs`'s bounds checks hold.
#[inline]
unsafe fn block_rows(
    jobs: &Jobs,
    first: usize,
    lda: usize,
    ldc: usize,
) -> (Rows, [*mut f32; MR], usize) {
    let mut rows: Rows = [std::ptr::null(); MR];
    let mut outs = [std::ptr::null_mut(); MR];
    let (mut n, mut skip) = (0, first);
    for job in &jobs.jobs[..jobs.n] {
        if skip >= job.m {
            skip -= job.m;
            continue;
        }
        for r in skip..job.m {
            if n == MR {
                return (rows, outs, n);
            }
            rows[n] = job.a.add(r * lda);
            outs[n] = job.out.add(r * ldc);
            n += 1;
        }
        skip = 0;
    }
    (rows, outs, n)
}

/// Applies the epilogue to one block.
///
/// # Safety
/// `outs[r]` points at row `r`'s output row, which has `j0 + cols` values.
#[inline(always)]
unsafe fn store(acc: &[[f32; NB]], outs: &[*mut f32; MR], j0: usize, cols: usize, epi: Epi) {
    for (row, &out) in acc.iter().zip(outs) {
        let dst = std::slice::from_raw_parts_mut(out.add(j0), cols);
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
