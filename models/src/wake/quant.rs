//! TensorFlow Lite's integer requantization: a real multiplier as a Q31 significand and a
//! power-of-two shift, applied with a rounding doubling high multiply and a rounding right
//! shift (the gemmlowp arithmetic the int8 kernels share), plus activation clamps.

use super::WakeError;

/// Splits `m` into a Q31 significand and an exponent, as TFLite's `QuantizeMultiplier`.
pub fn quantize_multiplier(m: f64) -> (i32, i32) {
    if m == 0.0 || !m.is_finite() {
        return (0, 0);
    }
    let (q, mut shift) = frexp(m);
    let mut fixed = (q * (1i64 << 31) as f64).round() as i64;
    if fixed == 1i64 << 31 {
        fixed /= 2;
        shift += 1;
    }
    if shift < -31 {
        return (0, 0);
    }
    (fixed as i32, shift)
}

/// `m = q * 2^e` with `0.5 <= |q| < 1` (finite, non-zero `m`).
fn frexp(m: f64) -> (f64, i32) {
    let bits = m.to_bits();
    let exp = ((bits >> 52) & 0x7ff) as i32;
    if exp == 0 {
        // Subnormal: scale up first.
        let (q, e) = frexp(m * 2f64.powi(64));
        return (q, e - 64);
    }
    let q = f64::from_bits((bits & !(0x7ffu64 << 52)) | (1022u64 << 52));
    (q, exp - 1022)
}

fn saturating_rounding_doubling_high_mul(a: i32, b: i32) -> i32 {
    if a == b && a == i32::MIN {
        return i32::MAX;
    }
    let ab = i64::from(a) * i64::from(b);
    let nudge: i64 = if ab >= 0 { 1 << 30 } else { 1 - (1 << 30) };
    ((ab + nudge) / (1i64 << 31)) as i32
}

fn rounding_divide_by_pot(x: i32, exponent: i32) -> i32 {
    let mask = ((1i64 << exponent) - 1) as i32;
    let remainder = x & mask;
    let threshold = (mask >> 1) + i32::from(x < 0);
    (x >> exponent) + i32::from(remainder > threshold)
}

/// `x * multiplier * 2^shift`, rounded as TFLite's `MultiplyByQuantizedMultiplier`.
pub fn multiply(x: i32, multiplier: i32, shift: i32) -> i32 {
    let left = shift.max(0);
    let right = (-shift).max(0);
    rounding_divide_by_pot(
        saturating_rounding_doubling_high_mul(x.wrapping_mul(1 << left), multiplier),
        right,
    )
}

/// `x * multiplier * 2^shift` with the right shift's ties rounded upward, as TFLite's
/// optimized DEPTHWISE_CONV_2D (`DepthwiseConvOutputRounding::kUpward`).
pub fn multiply_upward(x: i32, multiplier: i32, shift: i32) -> i32 {
    let left = shift.max(0);
    let right = (-shift).max(0);
    let round = if right > 0 { 1i32 << (right - 1) } else { 0 };
    saturating_rounding_doubling_high_mul(x.wrapping_mul(1 << left), multiplier).wrapping_add(round)
        >> right
}

/// The clamp range of an 8-bit output for a fused activation (schema codes: 0 none, 1 RELU,
/// 2 RELU_N1_TO_1, 3 RELU6).
pub fn activation_range(
    act: u8,
    scale: f32,
    zp: i32,
    lo: i32,
    hi: i32,
) -> Result<(i32, i32), WakeError> {
    let q = |f: f32| zp + (f / scale).round() as i32;
    Ok(match act {
        0 => (lo, hi),
        1 => (lo.max(q(0.0)), hi),
        2 => (lo.max(q(-1.0)), hi.min(q(1.0))),
        3 => (lo.max(q(0.0)), hi.min(q(6.0))),
        _ => {
            return Err(WakeError::BadModel(format!(
                "fused activation {act} is not supported"
            )))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multiplier_of_one_is_identity() {
        let (m, s) = quantize_multiplier(1.0);
        assert_eq!((m, s), (1 << 30, 1));
        for x in [-300, -1, 0, 1, 127, 40_000] {
            assert_eq!(multiply(x, m, s), x);
        }
    }

    #[test]
    fn ties_away_from_zero_or_upward() {
        // 0.25: x/2 rounded in the high multiply, then a rounding shift by one.
        let (m, s) = quantize_multiplier(0.25);
        assert_eq!((m, s), (1 << 30, -1));
        assert_eq!(multiply(6, m, s), 2);
        assert_eq!(multiply(-6, m, s), -2);
        assert_eq!(multiply_upward(6, m, s), 2);
        assert_eq!(multiply_upward(-6, m, s), -1);
    }
}
