//! The AVX-512 VNNI path: lane `i` of a 512-bit register is weight row `i` of the group, so
//! one `vpdpbusd` adds four products to each of the 16 rows; eight of them (two chains)
//! give each row's exact block dot product. Weights are unsigned (q4_0 nibbles, q8_0 stored
//! as `w + 128`) and the chain starts at `-bias * sum(a)`, which makes the sum the signed
//! dot product. Up to eight activation rows share each block's weight registers.

use super::super::cpu::{prefetch, prefetch_l2};
use super::{Acts, Line, G, PREFETCH, PREFETCH_L2};
use core::arch::x86_64::*;

/// # Safety
/// avx512f/bw/vl/vnni, avx2, fma and f16c present; `sc`/`q` hold whole groups of `acts.nb`
/// blocks in the [`super::QGemv`] layout with unsigned q8_0, `out_t` holds `acts.m * G`
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
    debug_assert_eq!(out_t.len(), groups * m * G);
    debug_assert_eq!(q.len() * 32, groups * nb * G * qb);
    debug_assert!(acts.scales.len() >= m * nb && acts.quants.len() >= m * nb);
    debug_assert!(acts.neg.len() >= m * nb);
    let qp = q.as_ptr() as *const u8;
    for g in 0..groups {
        let out = &mut out_t[g * m * G..(g + 1) * m * G];
        let mut r0 = 0;
        while r0 < m {
            let rows = [8, 4, 2, 1].into_iter().find(|&t| t <= m - r0).unwrap_or(1);
            // SAFETY: as the function's contract.
            unsafe {
                let t = Tile {
                    nb,
                    gs: sc.as_ptr().add(g * nb * G),
                    gq: qp.add(g * nb * G * qb),
                    acts,
                    r0,
                    first: r0 == 0,
                };
                match rows {
                    8 => t.run::<Q4, 8>(out),
                    4 => t.run::<Q4, 4>(out),
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
    /// Writes `out[r * G + i]` for the tile's activation rows `r` and the group's rows `i`.
    ///
    /// # Safety
    /// As [`groups`].
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    unsafe fn run<const Q4: bool, const RT: usize>(&self, out: &mut [f32]) {
        let qb = if Q4 { 16 } else { 32 };
        let nb = self.nb;
        let low = _mm512_set1_epi8(0x0F);
        let mut acc = [_mm512_setzero_ps(); RT];
        unsafe {
            for j in 0..nb {
                let sw = _mm512_cvtph_ps(_mm256_loadu_si256(self.gs.add(j * G) as *const _));
                let bq = self.gq.add(j * G * qb);
                if self.first {
                    prefetch(bq.wrapping_add(PREFETCH), G * qb);
                    prefetch_l2(bq.wrapping_add(PREFETCH_L2), G * qb);
                }
                let load = |u: usize| _mm512_loadu_si512(bq.add(u * 64) as *const _);
                let w: [__m512i; 8] = if Q4 {
                    let v = [load(0), load(1), load(2), load(3)];
                    let hi = |x| _mm512_and_si512(_mm512_srli_epi16::<4>(x), low);
                    let lo = |x| _mm512_and_si512(x, low);
                    [
                        lo(v[0]),
                        hi(v[0]),
                        lo(v[1]),
                        hi(v[1]),
                        lo(v[2]),
                        hi(v[2]),
                        lo(v[3]),
                        hi(v[3]),
                    ]
                } else {
                    [0, 1, 2, 3, 4, 5, 6, 7].map(load)
                };
                for (t, acc) in acc.iter_mut().enumerate() {
                    let at = (self.r0 + t) * nb + j;
                    let a = self.acts.quants.as_ptr().add(at) as *const i32;
                    // Two chains (even and odd steps) for latency; integer sums are exact.
                    let mut x0 = _mm512_set1_epi32(*self.acts.neg.get_unchecked(at));
                    let mut x1 = _mm512_setzero_si512();
                    for u in 0..4 {
                        let a0 = _mm512_set1_epi32(*a.add(2 * u));
                        let a1 = _mm512_set1_epi32(*a.add(2 * u + 1));
                        x0 = _mm512_dpbusd_epi32(x0, w[2 * u], a0);
                        x1 = _mm512_dpbusd_epi32(x1, w[2 * u + 1], a1);
                    }
                    let s = _mm512_cvtepi32_ps(_mm512_add_epi32(x0, x1));
                    let d = _mm512_mul_ps(sw, _mm512_set1_ps(*self.acts.scales.get_unchecked(at)));
                    *acc = _mm512_fmadd_ps(d, s, *acc);
                }
            }
            for (t, acc) in acc.iter().enumerate() {
                _mm512_storeu_ps(out.as_mut_ptr().add((self.r0 + t) * G), *acc);
            }
        }
    }
}
