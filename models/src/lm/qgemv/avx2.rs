//! The AVX2 path: per group, each activation row in turn against the group's eight weight
//! rows (the group is read from memory for the first row and from cache for the others).

use super::super::cpu::{hsum8, prefetch};
use super::{Acts, Line, G, PREFETCH};
use core::arch::x86_64::*;

/// One q4_0 row-block's lanes: `sum(u * a) + neg` per 4 bytes with `u` the unsigned nibbles
/// and `neg = -8 * sum(a)`, which is exactly `sum((u - 8) * a)` (all integer, no saturation:
/// |u * a| <= 15 * 127), converted to f32.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn q4_lanes(u: __m256i, a: __m256i, neg: __m256i) -> __m256 {
    let dot = _mm256_madd_epi16(_mm256_set1_epi16(1), _mm256_maddubs_epi16(u, a));
    _mm256_cvtepi32_ps(_mm256_add_epi32(dot, neg))
}

/// Lanes of four products of signed bytes: `|x| * sign(y, x)` through `maddubs` (no
/// saturation: quants are in [-127, 127]), pairs summed by `madd`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn q8_lanes(x: __m256i, y: __m256i) -> __m256 {
    let ax = _mm256_sign_epi8(x, x);
    let sy = _mm256_sign_epi8(y, x);
    let dot = _mm256_maddubs_epi16(ax, sy);
    _mm256_cvtepi32_ps(_mm256_madd_epi16(_mm256_set1_epi16(1), dot))
}

/// # Safety
/// avx2, fma and f16c present; `sc`/`q` hold whole groups of `acts.nb` blocks in the
/// [`super::QGemv`] layout (signed q8_0), `out_t` holds `G * acts.m` entries per group;
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
    debug_assert_eq!(out_t.len(), groups * G * m);
    debug_assert_eq!(q.len() * 32, groups * nb * G * qb);
    debug_assert!(acts.scales.len() >= m * nb && acts.quants.len() >= m * nb);
    debug_assert!(!Q4 || acts.neg.len() >= m * nb);
    let qp = q.as_ptr() as *const u8;
    for g in 0..groups {
        for r in 0..m {
            // SAFETY: as the function's contract; rows r * nb.. are in acts.
            let acc = unsafe {
                row_group::<Q4>(
                    nb,
                    sc.as_ptr().add(g * nb * G),
                    qp.add(g * nb * G * qb),
                    &acts.scales[r * nb..],
                    &acts.quants[r * nb..],
                    if Q4 { &acts.neg[r * nb..] } else { &[] },
                    r == 0,
                )
            };
            for (i, a) in acc.iter().enumerate() {
                out_t[(g * G + i) * m + r] = hsum8(*a);
            }
        }
    }
}

/// One activation row against one group's eight weight rows: the eight lane accumulators.
///
/// # Safety
/// As [`groups`]: `gs`/`gq` point at one group's scales and quants, `ad`/`aq` (and for
/// q4_0 `neg`) hold `nb` blocks.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn row_group<const Q4: bool>(
    nb: usize,
    gs: *const u16,
    gq: *const u8,
    ad: &[f32],
    aq: &[Line],
    neg: &[Line],
    first: bool,
) -> [__m256; G] {
    let qb = if Q4 { 16 } else { 32 };
    let mut acc = [_mm256_setzero_ps(); G];
    let mut d = [0f32; G];
    let low = _mm256_set1_epi8(0x0F);
    unsafe {
        for j in 0..nb {
            let by = _mm256_load_si256(aq.as_ptr().add(j) as *const __m256i);
            // The G scale products f32(w) * f32(a).
            let s = _mm256_cvtph_ps(_mm_loadu_si128(gs.add(j * G) as *const __m128i));
            _mm256_storeu_ps(
                d.as_mut_ptr(),
                _mm256_mul_ps(s, _mm256_set1_ps(*ad.get_unchecked(j))),
            );
            let bq = gq.add(j * G * qb);
            if first {
                prefetch(bq.wrapping_add(PREFETCH), G * qb);
            }
            if Q4 {
                let n8 = _mm256_load_si256(neg.as_ptr().add(j) as *const __m256i);
                for p in 0..G / 2 {
                    let line = _mm256_load_si256(bq.add(p * 32) as *const __m256i);
                    let u0 = _mm256_and_si256(line, low);
                    let u1 = _mm256_and_si256(_mm256_srli_epi16::<4>(line), low);
                    let (i0, i1) = (2 * p, 2 * p + 1);
                    let l0 = q4_lanes(u0, by, n8);
                    let l1 = q4_lanes(u1, by, n8);
                    acc[i0] = _mm256_fmadd_ps(_mm256_broadcast_ss(&d[i0]), l0, acc[i0]);
                    acc[i1] = _mm256_fmadd_ps(_mm256_broadcast_ss(&d[i1]), l1, acc[i1]);
                }
            } else {
                for (i, a) in acc.iter_mut().enumerate() {
                    let w = _mm256_load_si256(bq.add(i * qb) as *const __m256i);
                    *a = _mm256_fmadd_ps(_mm256_broadcast_ss(&d[i]), q8_lanes(w, by), *a);
                }
            }
        }
    }
    acc
}
