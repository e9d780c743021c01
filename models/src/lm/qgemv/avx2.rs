//! The AVX2 path: lane `i` of a 256-bit register is weight row `i` of a half group (8
//! rows), so `maddubs` + `madd` add four products to each of 8 rows (q8_0 through the sign
//! trick `|w| * sign(a, w)`, q4_0 nibbles directly: no saturation in either, |products| and
//! pair sums stay below 2^15); eight steps give each row's exact block dot product. Up to
//! four activation rows share each block's trip through the group.

use super::super::cpu::{prefetch, prefetch_l2};
use super::{Acts, Line, G, PREFETCH, PREFETCH_L2};
use core::arch::x86_64::*;

/// Activation rows per tile: 4 rows x 2 halves of accumulators.
const R: usize = 4;

/// # Safety
/// avx2, fma and f16c present; `sc`/`q` hold whole groups of `acts.nb` blocks in the
/// [`super::QGemv`] layout (signed q8_0), `out_t` holds `acts.m * G` entries per group;
/// `acts` holds `m` rows of `nb` blocks (and, for q4_0, their offsets).
#[target_feature(enable = "avx2,fma,f16c")]
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
            let rows = (m - r0).min(R);
            // SAFETY: as the function's contract.
            unsafe {
                let gs = sc.as_ptr().add(g * nb * G);
                let gq = qp.add(g * nb * G * qb);
                match rows {
                    4 => tile::<Q4, 4>(nb, gs, gq, acts, r0, out),
                    3 => tile::<Q4, 3>(nb, gs, gq, acts, r0, out),
                    2 => tile::<Q4, 2>(nb, gs, gq, acts, r0, out),
                    _ => tile::<Q4, 1>(nb, gs, gq, acts, r0, out),
                }
            }
            r0 += rows;
        }
    }
}

/// One group against activation rows `r0..r0 + RT`: writes `out[r * G + i]`.
///
/// # Safety
/// As [`groups`]; `gs`/`gq` point at the group's scales and quants.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn tile<const Q4: bool, const RT: usize>(
    nb: usize,
    gs: *const u16,
    gq: *const u8,
    acts: Acts<'_>,
    r0: usize,
    out: &mut [f32],
) {
    let qb = if Q4 { 16 } else { 32 };
    let low = _mm256_set1_epi8(0x0F);
    let ones = _mm256_set1_epi16(1);
    let mut acc = [[_mm256_setzero_ps(); 2]; RT];
    unsafe {
        for j in 0..nb {
            let sw =
                [0, 1].map(|h| _mm256_cvtph_ps(_mm_loadu_si128(gs.add(j * G + 8 * h) as *const _)));
            let bq = gq.add(j * G * qb);
            if r0 == 0 {
                prefetch(bq.wrapping_add(PREFETCH), G * qb);
                prefetch_l2(bq.wrapping_add(PREFETCH_L2), G * qb);
            }
            for (t, acc) in acc.iter_mut().enumerate() {
                let at = (r0 + t) * nb + j;
                let a = acts.quants.as_ptr().add(at) as *const i32;
                let da = _mm256_set1_ps(*acts.scales.get_unchecked(at));
                for (h, acc) in acc.iter_mut().enumerate() {
                    let mut x = _mm256_set1_epi32(*acts.neg.get_unchecked(at));
                    for step in 0..8 {
                        let a4 = _mm256_set1_epi32(*a.add(step));
                        let four = if Q4 {
                            let v =
                                _mm256_loadu_si256(bq.add((step / 2) * 64 + h * 32) as *const _);
                            let u = if step % 2 == 0 {
                                v
                            } else {
                                _mm256_srli_epi16::<4>(v)
                            };
                            _mm256_maddubs_epi16(_mm256_and_si256(u, low), a4)
                        } else {
                            let w = _mm256_loadu_si256(bq.add(step * 64 + h * 32) as *const _);
                            _mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(a4, w))
                        };
                        x = _mm256_add_epi32(x, _mm256_madd_epi16(four, ones));
                    }
                    let d = _mm256_mul_ps(sw[h], da);
                    *acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(x), *acc);
                }
            }
        }
        for (t, acc) in acc.iter().enumerate() {
            for (h, a) in acc.iter().enumerate() {
                _mm256_storeu_ps(out.as_mut_ptr().add((r0 + t) * G + 8 * h), *a);
            }
        }
    }
}
