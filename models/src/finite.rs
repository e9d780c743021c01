//! Finding NaN and infinite values in loaded weights.
//!
//! A checkpoint with one NaN weight gives NaN everywhere downstream (a WAV of 100 % NaN, or
//! logits that sample garbage), far from the cause. Loaders check each tensor as it is read,
//! once, while it is still in CPU memory: a pass over data that was just read from disk.

use candle_core::quantized::GgmlDType;
use candle_core::{CpuStorage, DType, Storage, Tensor};

/// Index (in row-major order) of the first non-finite element of `t`, if any. Integer
/// tensors are always finite.
pub(crate) fn first_non_finite(t: &Tensor) -> candle_core::Result<Option<usize>> {
    if !matches!(
        t.dtype(),
        DType::F32 | DType::F16 | DType::BF16 | DType::F64
    ) {
        return Ok(None);
    }
    if t.device().is_cpu() && t.is_contiguous() {
        let (storage, layout) = t.storage_and_layout();
        if let Storage::Cpu(cpu) = &*storage {
            let (a, n) = (layout.start_offset(), t.elem_count());
            let found = match cpu {
                CpuStorage::F32(v) => v[a..a + n].iter().position(|x| !x.is_finite()),
                CpuStorage::F16(v) => v[a..a + n].iter().position(|x| !x.is_finite()),
                CpuStorage::BF16(v) => v[a..a + n].iter().position(|x| !x.is_finite()),
                CpuStorage::F64(v) => v[a..a + n].iter().position(|x| !x.is_finite()),
                _ => None,
            };
            return Ok(found);
        }
    }
    let v = t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
    Ok(v.iter().position(|x| !x.is_finite()))
}

/// Index of the first GGML block of `data` whose scale (f16 `d`, and `dmin` for k-quants) is
/// not finite; for the plain float types, of the first non-finite element. The quantized
/// values themselves are integers and cannot be NaN.
pub(crate) fn first_non_finite_block(ty: GgmlDType, data: &[u8]) -> Option<usize> {
    let f16_at = |b: &[u8], i: usize| half::f16::from_le_bytes([b[i], b[i + 1]]);
    match ty {
        GgmlDType::F32 => data
            .chunks_exact(4)
            .position(|b| !f32::from_le_bytes([b[0], b[1], b[2], b[3]]).is_finite()),
        GgmlDType::F16 => data.chunks_exact(2).position(|b| !f16_at(b, 0).is_finite()),
        GgmlDType::BF16 => data
            .chunks_exact(2)
            .position(|b| !half::bf16::from_le_bytes([b[0], b[1]]).is_finite()),
        // Blocks that start with their f16 scale `d`.
        GgmlDType::Q4_0 | GgmlDType::Q4_1 | GgmlDType::Q5_0 | GgmlDType::Q5_1 | GgmlDType::Q8_0 => {
            let size = ty.type_size();
            data.chunks_exact(size)
                .position(|b| !f16_at(b, 0).is_finite())
        }
        // k-quants that start with `d` and `dmin` (q4k, q5k).
        GgmlDType::Q4K | GgmlDType::Q5K => {
            let size = ty.type_size();
            data.chunks_exact(size)
                .position(|b| !f16_at(b, 0).is_finite() || !f16_at(b, 2).is_finite())
        }
        // Other layouts are never written by moshid; candle reads them as they are.
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn finds_the_first_bad_value_in_each_dtype() {
        let mut v = vec![1f32; 10];
        v[7] = f32::NAN;
        let t = Tensor::from_vec(v.clone(), (2, 5), &Device::Cpu).unwrap();
        for dt in [DType::F32, DType::F16, DType::BF16, DType::F64] {
            let t = t.to_dtype(dt).unwrap();
            assert_eq!(first_non_finite(&t).unwrap(), Some(7), "{dt:?}");
            // A strided view goes through the copying path.
            assert_eq!(
                first_non_finite(&t.t().unwrap()).unwrap(),
                Some(5),
                "{dt:?}"
            );
        }
        v[7] = f32::INFINITY;
        let t = Tensor::from_vec(v, 10, &Device::Cpu).unwrap();
        assert_eq!(first_non_finite(&t).unwrap(), Some(7));
        let ok = Tensor::ones(4, DType::F32, &Device::Cpu).unwrap();
        assert_eq!(first_non_finite(&ok).unwrap(), None);
    }

    #[test]
    fn finds_a_nan_block_scale() {
        let x = Tensor::ones((2, 256), DType::F32, &Device::Cpu).unwrap();
        for ty in [GgmlDType::Q8_0, GgmlDType::Q4_0, GgmlDType::Q4K] {
            let q = candle_core::quantized::QTensor::quantize(&x, ty).unwrap();
            let mut data = q.data().unwrap().into_owned();
            assert_eq!(first_non_finite_block(ty, &data), None, "{ty:?}");
            let second = ty.type_size();
            data[second..second + 2].copy_from_slice(&half::f16::NAN.to_le_bytes());
            assert_eq!(first_non_finite_block(ty, &data), Some(1), "{ty:?}");
        }
    }
}
