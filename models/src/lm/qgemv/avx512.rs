//! The AVX-512 VNNI path: per group, tiles of up to four activation rows, each held against
//! the group's eight weight rows in 16 registers; one 512-bit `vpdpbusd` computes the lanes
//! of two weight rows. Weights are unsigned (q4_0 nibbles, q8_0 stored as `w + 128`) and the
//! accumulator starts at `-bias * sum(a)` per lane, so each lane is the exact signed integer
//! dot product the AVX2 path forms; the float arithmetic is the same per lane and per row.

use super::super::cpu::{hsum8, prefetch};
use super::{Acts, Line, G, PREFETCH};
use core::arch::x86_64::*;

/// Activation rows per register tile: 4 x 4 accumulators + 4 weight pairs + scales fit in
/// the 32 vector registers.
const R: usize = 4;

/// The weight rows (low half, high half) each of the four 512-bit pair vectors holds. q8_0:
/// 64 contiguous bytes are rows 2p and 2p + 1. q4_0: 64 bytes are two nibble lines (rows
/// 4t, 4t + 1 and 4t + 2, 4t + 3); the low nibbles give rows (4t, 4t + 2), the high ones
/// (4t + 1, 4t + 3).
const fn pairs(q4: bool) -> [(usize, usize); 4] {
    if q4 {
        [(0, 2), (1, 3), (4, 6), (5, 7)]
    } else {
        [(0, 1), (2, 3), (4, 5), (6, 7)]
    }
}

/// # Safety
/// avx512f/bw/vl/vnni, avx2, fma and f16c present; `sc`/`q` hold whole groups of `acts.nb`
/// blocks in the [`super::QGemv`] layout with unsigned q8_0, `out_t` holds `G * acts.m`
/// entries per group; `acts` holds `m` rows of `nb` blocks with their offsets.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(super) unsafe fn groups<const Q4: bool>(
    sc: &[u16],
    q: &[Line],
    acts: Acts<'_>,
    out_t: &mut [f32],
) {
    let (m, nb) = (acts.m, acts.nb);
    let qb = if Q4 { 16 } else { 32 };
    let groups = sc.len() / (nb * G);
    debug_assert_eq!(out_t.len(), groups * G * m);
    debug_assert_eq!(q.len() * 32, groups * nb * G * qb);
    debug_assert!(acts.scales.len() >= m * nb && acts.quants.len() >= m * nb);
    debug_assert!(acts.neg.len() >= m * nb);
    let qp = q.as_ptr() as *const u8;
    for g in 0..groups {
        let out = &mut out_t[g * G * m..(g + 1) * G * m];
        let mut r0 = 0;
        while r0 < m {
            let rows = (m - r0).min(R);
            // SAFETY: as the function's contract.
            unsafe {
                let gs = sc.as_ptr().add(g * nb * G);
                let gq = qp.add(g * nb * G * qb);
                let t = Tile {
                    nb,
                    gs,
                    gq,
                    acts,
                    r0,
                    first: r0 == 0,
                };
                match rows {
                    4 => t.run::<Q4, 4>(out),
                    3 => t.run::<Q4, 3>(out),
                    2 => t.run::<Q4, 2>(out),
                    _ => t.run::<Q4, 1>(out),
                }
            }
            r0 += rows;
        }
    }
}

/// One group against activation rows `r0..r0 + RT`.
struct Tile<'a> {
    nb: usize,
    gs: *const u16,
    gq: *const u8,
    acts: Acts<'a>,
    r0: usize,
    /// The group's first tile: its weights come from memory, so prefetch ahead.
    first: bool,
}

impl Tile<'_> {
    /// Writes `out[row * m + r]` for the group's rows and the tile's activation rows.
    ///
    /// # Safety
    /// As [`groups`].
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    unsafe fn run<const Q4: bool, const RT: usize>(&self, out: &mut [f32]) {
        let qb = if Q4 { 16 } else { 32 };
        let (nb, m) = (self.nb, self.acts.m);
        let pr = pairs(Q4);
        let idx = pr.map(|(a, b)| {
            let (a, b) = (a as i32, b as i32);
            _mm512_setr_epi32(a, a, a, a, a, a, a, a, b, b, b, b, b, b, b, b)
        });
        let low = _mm512_set1_epi8(0x0F);
        let mut acc = [[_mm512_setzero_ps(); 4]; RT];
        unsafe {
            for j in 0..nb {
                let s = _mm256_cvtph_ps(_mm_loadu_si128(self.gs.add(j * G) as *const __m128i));
                let s = _mm512_castps256_ps512(s);
                let sp = idx.map(|ix| _mm512_permutexvar_ps(ix, s));
                let bq = self.gq.add(j * G * qb);
                if self.first {
                    prefetch(bq.wrapping_add(PREFETCH), G * qb);
                }
                let w = if Q4 {
                    let l0 = _mm512_loadu_si512(bq as *const _);
                    let l1 = _mm512_loadu_si512(bq.add(64) as *const _);
                    let hi = |l| _mm512_and_si512(_mm512_srli_epi16::<4>(l), low);
                    [
                        _mm512_and_si512(l0, low),
                        hi(l0),
                        _mm512_and_si512(l1, low),
                        hi(l1),
                    ]
                } else {
                    [0, 1, 2, 3].map(|p| _mm512_loadu_si512(bq.add(p * 64) as *const _))
                };
                for (t, acc) in acc.iter_mut().enumerate() {
                    let at = (self.r0 + t) * nb + j;
                    let a = load_line(self.acts.quants.as_ptr().add(at));
                    let neg = load_line(self.acts.neg.as_ptr().add(at));
                    let da = _mm512_set1_ps(*self.acts.scales.get_unchecked(at));
                    for p in 0..4 {
                        let lanes = _mm512_dpbusd_epi32(neg, w[p], a);
                        let d = _mm512_mul_ps(sp[p], da);
                        acc[p] = _mm512_fmadd_ps(d, _mm512_cvtepi32_ps(lanes), acc[p]);
                    }
                }
            }
        }
        for (t, acc) in acc.iter().enumerate() {
            let r = self.r0 + t;
            for (p, &(ra, rb)) in pr.iter().enumerate() {
                let lo = _mm512_castps512_ps256(acc[p]);
                let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(acc[p])));
                out[ra * m + r] = hsum8(lo);
                out[rb * m + r] = hsum8(hi);
            }
        }
    }
}

/// One 32-byte line in both halves of a 512-bit vector.
///
/// # Safety
/// `p` points at a readable line.
#[inline]
#[target_feature(enable = "avx512f,avx2")]
unsafe fn load_line(p: *const Line) -> __m512i {
    unsafe { _mm512_broadcast_i64x4(_mm256_load_si256(p as *const __m256i)) }
}
