//! The kernel against a scalar model of ggml's q8_0/q4_0 arithmetic (bit for bit, every
//! path this CPU runs) and against candle's `QMatMul` (within a tolerance that covers
//! candle's own CPU-dependent paths).

use super::*;
use candle_core::quantized::{QMatMul, QTensor};
use candle_core::Module;
use half::f16;

/// ggml's activation quantization (quantize_row_q8_0): per 32-block, scale `amax / 127`
/// stored as f16, quants `round(x / scale)` (by multiplying with the f32 inverse).
fn quantize_row(x: &[f32]) -> Vec<(f32, [i8; 32])> {
    x.chunks_exact(QK)
        .map(|b| {
            let amax = b.iter().fold(0f32, |a, v| a.max(v.abs()));
            let d = amax / 127.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            let mut q = [0i8; 32];
            for (q, &v) in q.iter_mut().zip(b) {
                *q = (v * id).round() as i8;
            }
            (f16::from_f32(d).to_f32(), q)
        })
        .collect()
}

/// One weight block's 32 signed values and f32 scale from its GGML bytes.
fn weight_block(kind: Kind, b: &[u8]) -> (f32, [i32; 32]) {
    let d = f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32();
    let mut w = [0i32; 32];
    for (i, w) in w.iter_mut().enumerate() {
        *w = match kind {
            Kind::Q8_0 => b[2 + i] as i8 as i32,
            Kind::Q4_0 if i < 16 => (b[2 + i] & 15) as i32 - 8,
            Kind::Q4_0 => (b[2 + i - 16] >> 4) as i32 - 8,
        };
    }
    (d, w)
}

/// The stated arithmetic: per block, the exact integer dot product `s` and
/// `d = f32(w_d) * f32(a_d)`; `acc = fma(d, s, acc)` over the blocks in order from 0.
fn reference(kind: Kind, n: usize, k: usize, data: &[u8], x: &[f32]) -> Vec<f32> {
    let bb = kind.block_bytes();
    let nb = k / QK;
    let mut out = Vec::new();
    for row in x.chunks_exact(k) {
        let a = quantize_row(row);
        for r in 0..n {
            let mut acc = 0f32;
            for (j, (ad, aq)) in a.iter().enumerate() {
                let (wd, w) = weight_block(kind, &data[(r * nb + j) * bb..][..bb]);
                let s: i32 = w.iter().zip(aq).map(|(&w, &a)| w * a as i32).sum();
                acc = (wd * ad).mul_add(s as f32, acc);
            }
            out.push(acc);
        }
    }
    out
}

fn weights(n: usize, k: usize) -> Tensor {
    let w: Vec<f32> = (0..n * k)
        .map(|i| ((i * 7919 % 1013) as f32 - 506.0) / 97.0 * (1 + i % 5) as f32)
        .collect();
    Tensor::from_vec(w, (n, k), &Device::Cpu).unwrap()
}

fn acts(m: usize, k: usize) -> Vec<f32> {
    (0..m * k)
        .map(|i| ((i * 31 % 67) as f32 - 33.0) / 7.0 * (1 + i / k) as f32)
        .collect()
}

fn dtype(kind: Kind) -> GgmlDType {
    match kind {
        Kind::Q8_0 => GgmlDType::Q8_0,
        Kind::Q4_0 => GgmlDType::Q4_0,
    }
}

/// Every path this CPU has, both formats, several row counts (tiles of 4 with remainders),
/// row counts that are not a multiple of the group, and a q8_0 matrix over 2 MiB (on a
/// huge-page mapping): bit-identical to the scalar model.
#[test]
fn matches_the_scalar_model_bit_for_bit() {
    for (n, k) in [(203, 256), (64, 1024), (2112, 1024)] {
        let w = weights(n, k);
        for kind in [Kind::Q8_0, Kind::Q4_0] {
            let q = QTensor::quantize(&w, dtype(kind)).unwrap();
            let data = q.data().unwrap().to_vec();
            for m in [1, 2, 3, 4, 5, 8, 11] {
                if n > 1000 && m > 2 {
                    continue; // the big matrix is for the mapping, not for the tiles
                }
                let x = acts(m, k);
                let want = reference(kind, n, k, &data, &x);
                for isa in Isa::available() {
                    let g = QGemv::with_isa(isa, dtype(kind), n, k, &data).unwrap();
                    let xt = Tensor::from_vec(x.clone(), (1, m, k), &Device::Cpu).unwrap();
                    let got = g.forward(&xt).unwrap();
                    assert_eq!(got.dims(), &[1, m, n]);
                    let got = got.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                    assert_eq!(got, want, "{kind:?} {isa:?} n={n} k={k} m={m}");
                }
            }
        }
    }
}

/// Against candle's quantized matmul: candle 0.11 takes an AVX2 or scalar path (same
/// activation quantization as ours: equal to float rounding) or, on CPUs with AVX-512 VNNI /
/// AVX-VNNI, a repacked path that quantizes activations its own way (about 1 % apart). The
/// bound covers both: relative L2 distance under 3 %.
#[test]
fn agrees_with_candle_within_its_cpu_paths() {
    let (n, k) = (203, 1024);
    let w = weights(n, k);
    for kind in [Kind::Q8_0, Kind::Q4_0] {
        let q = QTensor::quantize(&w, dtype(kind)).unwrap();
        let data = q.data().unwrap().to_vec();
        let Some(g) = QGemv::new(dtype(kind), n, k, &data) else {
            return; // no kernel on this CPU: candle's path is the only one
        };
        let mm = QMatMul::from_qtensor(q).unwrap();
        for m in [1, 4] {
            let x = Tensor::from_vec(acts(m, k), (1, m, k), &Device::Cpu).unwrap();
            let a = g
                .forward(&x)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            let b = mm
                .forward(&x)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            let num: f32 = a.iter().zip(&b).map(|(a, b)| (a - b) * (a - b)).sum();
            let den: f32 = b.iter().map(|b| b * b).sum();
            let rel = (num / den).sqrt();
            assert!(rel < 0.03, "{kind:?} m={m}: relative L2 distance {rel}");
        }
    }
}

/// A path handed inputs of other shapes refuses them instead of reading out of bounds.
#[test]
fn refuses_mismatched_input() {
    let (n, k) = (16, 64);
    let q = QTensor::quantize(&weights(n, k), GgmlDType::Q8_0).unwrap();
    let data = q.data().unwrap().to_vec();
    let Some(g) = QGemv::new(GgmlDType::Q8_0, n, k, &data) else {
        return;
    };
    let x = Tensor::zeros((2, 32), DType::F32, &Device::Cpu).unwrap();
    assert!(g.forward(&x).is_err());
    assert!(QGemv::new(GgmlDType::Q8_0, n, k, &data[1..]).is_none());
}
