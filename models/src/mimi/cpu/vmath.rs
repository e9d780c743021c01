//! Element-wise activations: ELU through a polynomial `exp` (Cephes' `expf`: a degree-6
//! polynomial on the reduced argument, about 1 ulp), the same fused operations in the
//! generic, AVX2 and NEON versions.
//!
//! SEANet applies ELU to about a million activations per frame; the C library's scalar
//! `expf` would cost several milliseconds of the 80 ms budget.

use super::isa::{madd, Isa, FUSED};

const LOG2E: f32 = std::f32::consts::LOG2_E;
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
const P: [f32; 6] = [
    1.987_569_1e-4,
    1.398_2e-3,
    8.333_452e-3,
    4.166_579_6e-2,
    1.666_666_5e-1,
    0.5,
];
/// Below this `exp` underflows; ELU is -1 there to f32 precision.
const X_MIN: f32 = -87.0;

/// `exp(x)` for `x <= 0` (clamped at [`X_MIN`]).
#[inline(always)]
fn exp_neg<const F: bool>(x: f32) -> f32 {
    let x = x.max(X_MIN);
    let n = madd::<F>(x, LOG2E, 0.5).floor();
    let r = madd::<F>(n, -LN2_HI, x);
    let r = madd::<F>(n, -LN2_LO, r);
    let mut y = P[0];
    for &c in &P[1..] {
        y = madd::<F>(y, r, c);
    }
    let r2 = r * r;
    let y = madd::<F>(y, r2, r) + 1.0;
    let scale = f32::from_bits(((n as i32 + 127) as u32) << 23);
    y * scale
}

#[inline(always)]
fn elu1<const F: bool>(x: f32) -> f32 {
    if x < 0.0 {
        exp_neg::<F>(x) - 1.0
    } else {
        x
    }
}

/// `dst[i] = elu(src[i])` (alpha 1).
pub(crate) fn elu(isa: Isa, src: &[f32], dst: &mut [f32]) {
    assert_eq!(src.len(), dst.len());
    match isa {
        Isa::Generic => elu_generic::<FUSED>(src, dst),
        // SAFETY: the variant exists only when the CPU has these features.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { elu_avx2(src, dst) },
        #[cfg(target_arch = "aarch64")]
        Isa::Neon => unsafe { elu_neon(src, dst) },
    }
}

/// The generic version with fused multiply-adds (bit reference for the vector versions).
pub(crate) fn elu_generic<const F: bool>(src: &[f32], dst: &mut [f32]) {
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = elu1::<F>(s);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn elu_avx2(src: &[f32], dst: &mut [f32]) {
    use std::arch::x86_64::*;
    let n8 = src.len() / 8 * 8;
    let zero = _mm256_setzero_ps();
    let one = _mm256_set1_ps(1.0);
    for i in (0..n8).step_by(8) {
        let x = _mm256_loadu_ps(src.as_ptr().add(i));
        let xc = _mm256_max_ps(x, _mm256_set1_ps(X_MIN));
        let n = _mm256_floor_ps(_mm256_fmadd_ps(
            xc,
            _mm256_set1_ps(LOG2E),
            _mm256_set1_ps(0.5),
        ));
        let r = _mm256_fmadd_ps(n, _mm256_set1_ps(-LN2_HI), xc);
        let r = _mm256_fmadd_ps(n, _mm256_set1_ps(-LN2_LO), r);
        let mut y = _mm256_set1_ps(P[0]);
        for &c in &P[1..] {
            y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(c));
        }
        let r2 = _mm256_mul_ps(r, r);
        let y = _mm256_add_ps(_mm256_fmadd_ps(y, r2, r), one);
        let e = _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127));
        let scale = _mm256_castsi256_ps(_mm256_slli_epi32::<23>(e));
        let em1 = _mm256_sub_ps(_mm256_mul_ps(y, scale), one);
        let neg = _mm256_cmp_ps::<_CMP_LT_OQ>(x, zero);
        _mm256_storeu_ps(dst.as_mut_ptr().add(i), _mm256_blendv_ps(x, em1, neg));
    }
    elu_generic::<true>(&src[n8..], &mut dst[n8..]);
}

#[cfg(target_arch = "aarch64")]
#[target_feature(enable = "neon")]
unsafe fn elu_neon(src: &[f32], dst: &mut [f32]) {
    use std::arch::aarch64::*;
    let n4 = src.len() / 4 * 4;
    let one = vdupq_n_f32(1.0);
    for i in (0..n4).step_by(4) {
        let x = vld1q_f32(src.as_ptr().add(i));
        let xc = vmaxq_f32(x, vdupq_n_f32(X_MIN));
        let n = vrndmq_f32(vfmaq_f32(vdupq_n_f32(0.5), xc, vdupq_n_f32(LOG2E)));
        let r = vfmaq_f32(xc, n, vdupq_n_f32(-LN2_HI));
        let r = vfmaq_f32(r, n, vdupq_n_f32(-LN2_LO));
        let mut y = vdupq_n_f32(P[0]);
        for &c in &P[1..] {
            y = vfmaq_f32(vdupq_n_f32(c), y, r);
        }
        let r2 = vmulq_f32(r, r);
        let y = vaddq_f32(vfmaq_f32(r, y, r2), one);
        let e = vaddq_s32(vcvtq_s32_f32(n), vdupq_n_s32(127));
        let scale = vreinterpretq_f32_s32(vshlq_n_s32::<23>(e));
        let em1 = vsubq_f32(vmulq_f32(y, scale), one);
        let neg = vcltq_f32(x, vdupq_n_f32(0.0));
        vst1q_f32(dst.as_mut_ptr().add(i), vbslq_f32(neg, em1, x));
    }
    elu_generic::<true>(&src[n4..], &mut dst[n4..]);
}
