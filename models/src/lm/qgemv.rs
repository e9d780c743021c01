//! Matrix-vector products over q8_0 / q4_0 weights on x86-64 CPUs with AVX2.
//!
//! Why not candle's `QMatMul`: on AVX2-only CPUs (no VNNI) candle 0.11 runs q8_0/q4_0 decode
//! one dot product per row, converting each block's f16 scale through a runtime-dispatched
//! helper, and schedules columns over a spinning pool: measured here it reads the weights at a
//! fraction of the memory bandwidth, which is what bounds an LM step. This kernel computes
//! four rows per pass (the activation block loaded once for all four), converts scales with
//! F16C, and splits rows over rayon. Each row's arithmetic is exactly candle's
//! `vec_dot_q8_0_q8_0` / `vec_dot_q4_0_q8_0` (same activation quantization, same lane-wise
//! accumulation and horizontal sum), so results are bit-identical to the candle path.

use candle_core::quantized::k_quants::{BlockQ8_0, GgmlType};
use candle_core::quantized::GgmlDType;
use candle_core::{DType, Device, Storage, Tensor};
use rayon::prelude::*;

const QK: usize = 32;
/// Bytes of one activation block (`BlockQ8_0`: f16 scale + 32 i8).
const ACT_BLOCK: usize = 34;

/// Weight block formats the kernel handles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Q8_0,
    Q4_0,
}

impl Kind {
    fn block_bytes(self) -> usize {
        match self {
            Kind::Q8_0 => 34,
            Kind::Q4_0 => 18,
        }
    }
}

/// A `[n, k]` quantized weight held as raw GGML blocks, row-major.
#[derive(Debug, Clone)]
pub(crate) struct QGemv {
    data: Vec<u8>,
    n: usize,
    k: usize,
    kind: Kind,
}

thread_local! {
    // The quantized activation rows, reused across calls (one per calling thread).
    static ACT: std::cell::RefCell<Vec<BlockQ8_0>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Whether this CPU runs the kernel (checked once per call site; the detection is cached).
#[cfg(target_arch = "x86_64")]
fn cpu_ok() -> bool {
    is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c")
}

#[cfg(not(target_arch = "x86_64"))]
fn cpu_ok() -> bool {
    false
}

impl QGemv {
    /// Takes `[n, k]` GGML blocks of `dtype` when this CPU and format are supported.
    pub(crate) fn new(dtype: GgmlDType, n: usize, k: usize, data: &[u8]) -> Option<Self> {
        let kind = match dtype {
            GgmlDType::Q8_0 => Kind::Q8_0,
            GgmlDType::Q4_0 => Kind::Q4_0,
            _ => return None,
        };
        if !cpu_ok() || k == 0 || k % QK != 0 || data.len() != n * (k / QK) * kind.block_bytes() {
            return None;
        }
        Some(Self {
            data: data.to_vec(),
            n,
            k,
            kind,
        })
    }

    /// Bytes held.
    pub(crate) fn bytes(&self) -> usize {
        self.data.len()
    }

    /// `x [.., k]` (f32, CPU) times the weight's transpose: `[.., n]`.
    pub(crate) fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        if x.dtype() != DType::F32 {
            let dt = x.dtype();
            return self.forward(&x.to_dtype(DType::F32)?)?.to_dtype(dt);
        }
        let x = x.contiguous()?;
        let dims = x.dims();
        let Some((&k, batch)) = dims.split_last() else {
            candle_core::bail!("qgemv: scalar input");
        };
        if k != self.k {
            candle_core::bail!(
                "qgemv: input {:?} does not match weight [{}, {k}]",
                dims,
                self.n
            );
        }
        let m: usize = batch.iter().product();
        let nb = k / QK;
        let mut out = vec![0f32; m * self.n];
        {
            let (storage, layout) = x.storage_and_layout();
            let Storage::Cpu(cpu) = &*storage else {
                candle_core::bail!("qgemv: input not on the CPU");
            };
            let all = cpu.as_slice::<f32>()?;
            let xs = &all[layout.start_offset()..layout.start_offset() + m * k];
            ACT.with(|cell| {
                let mut act = cell.borrow_mut();
                if act.len() < m * nb {
                    act.resize(m * nb, BlockQ8_0::zeros());
                }
                for (row, blocks) in xs.chunks_exact(k).zip(act.chunks_exact_mut(nb)) {
                    BlockQ8_0::from_float(row, blocks);
                }
                for (r, dst) in out.chunks_exact_mut(self.n).enumerate() {
                    let blocks = &act[r * nb..(r + 1) * nb];
                    // SAFETY: BlockQ8_0 is repr(C), 34 bytes (f16 + [i8; 32], asserted by
                    // candle), so `nb` blocks are `nb * 34` initialised bytes.
                    let bytes = unsafe {
                        std::slice::from_raw_parts(blocks.as_ptr() as *const u8, nb * ACT_BLOCK)
                    };
                    self.gemv(bytes, dst);
                }
            });
        }
        let mut shape = dims.to_vec();
        if let Some(last) = shape.last_mut() {
            *last = self.n;
        }
        Tensor::from_vec(out, shape, &Device::Cpu)
    }

    /// One activation row (quantized) against all weight rows, split over rayon in chunks of
    /// whole quads; chunks are small enough to rebalance when a core is busy elsewhere.
    fn gemv(&self, act: &[u8], dst: &mut [f32]) {
        let threads = rayon::current_num_threads().max(1);
        let row_bytes = self.k / QK * self.kind.block_bytes();
        let chunk = (self.n / (threads * 8)).max(64).next_multiple_of(4);
        let run = |(ci, out): (usize, &mut [f32])| {
            let r0 = ci * chunk;
            let w = &self.data[r0 * row_bytes..(r0 + out.len()) * row_bytes];
            rows(self.kind, w, row_bytes, act, out);
        };
        if self.n <= chunk {
            run((0, dst));
        } else {
            dst.par_chunks_mut(chunk).enumerate().for_each(run);
        }
    }
}

/// `out[i] = dot(w row i, act)` for the rows in `w`.
fn rows(kind: Kind, w: &[u8], row_bytes: usize, act: &[u8], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: QGemv::new only exists on CPUs with avx2, fma and f16c; slices are sized
        // by construction (w = out.len() rows of row_bytes, act = row_bytes / block * 34).
        unsafe {
            match kind {
                Kind::Q8_0 => avx::rows::<false>(w, row_bytes, act, out),
                Kind::Q4_0 => avx::rows::<true>(w, row_bytes, act, out),
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (kind, w, row_bytes, act, out);
        unreachable!("QGemv::new refuses non-x86-64 CPUs");
    }
}

#[cfg(target_arch = "x86_64")]
mod avx {
    use super::{ACT_BLOCK, QK};
    use core::arch::x86_64::*;

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn f16_at(p: *const u8) -> f32 {
        let bits = unsafe { std::ptr::read_unaligned(p as *const u16) };
        _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
    }

    /// The 32 signed weights of block at `p` (after its f16 scale).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn weights<const Q4: bool>(p: *const u8) -> __m256i {
        unsafe {
            if Q4 {
                // candle's bytes_from_nibbles_32 then -8.
                let tmp = _mm_loadu_si128(p.add(2) as *const __m128i);
                let bytes = _mm256_insertf128_si256::<1>(
                    _mm256_castsi128_si256(tmp),
                    _mm_srli_epi16(tmp, 4),
                );
                let b = _mm256_and_si256(_mm256_set1_epi8(0xF), bytes);
                _mm256_sub_epi8(b, _mm256_set1_epi8(8))
            } else {
                _mm256_loadu_si256(p.add(2) as *const __m256i)
            }
        }
    }

    /// candle's mul_sum_i8_pairs_float.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn mul_sum(x: __m256i, y: __m256i) -> __m256 {
        let ax = _mm256_sign_epi8(x, x);
        let sy = _mm256_sign_epi8(y, x);
        let dot = _mm256_maddubs_epi16(ax, sy);
        _mm256_cvtepi32_ps(_mm256_madd_epi16(_mm256_set1_epi16(1), dot))
    }

    /// candle's hsum_float_8.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn hsum(x: __m256) -> f32 {
        let res = _mm256_extractf128_ps(x, 1);
        let res = _mm_add_ps(res, _mm256_castps256_ps128(x));
        let res = _mm_add_ps(res, _mm_movehl_ps(res, res));
        let res = _mm_add_ss(res, _mm_movehdup_ps(res));
        _mm_cvtss_f32(res)
    }

    /// # Safety
    /// avx2, fma and f16c present; `w` holds `out.len()` rows of `row_bytes`; `act` holds
    /// the matching `row_bytes / block_bytes` activation blocks.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn rows<const Q4: bool>(
        w: &[u8],
        row_bytes: usize,
        act: &[u8],
        out: &mut [f32],
    ) {
        let bb = if Q4 { 2 + QK / 2 } else { 2 + QK };
        let nb = row_bytes / bb;
        debug_assert_eq!(w.len(), out.len() * row_bytes);
        debug_assert!(act.len() >= nb * ACT_BLOCK);
        let a = act.as_ptr();
        let n = out.len();
        let quads = n / 4;
        unsafe {
            for q in 0..quads {
                let r = q * 4;
                let p0 = w.as_ptr().add(r * row_bytes);
                let p1 = p0.add(row_bytes);
                let p2 = p1.add(row_bytes);
                let p3 = p2.add(row_bytes);
                let mut acc0 = _mm256_setzero_ps();
                let mut acc1 = _mm256_setzero_ps();
                let mut acc2 = _mm256_setzero_ps();
                let mut acc3 = _mm256_setzero_ps();
                for j in 0..nb {
                    let ab = a.add(j * ACT_BLOCK);
                    let da = f16_at(ab);
                    let by = _mm256_loadu_si256(ab.add(2) as *const __m256i);
                    let o = j * bb;
                    let d0 = _mm256_set1_ps(f16_at(p0.add(o)) * da);
                    let d1 = _mm256_set1_ps(f16_at(p1.add(o)) * da);
                    let d2 = _mm256_set1_ps(f16_at(p2.add(o)) * da);
                    let d3 = _mm256_set1_ps(f16_at(p3.add(o)) * da);
                    acc0 = _mm256_fmadd_ps(d0, mul_sum(weights::<Q4>(p0.add(o)), by), acc0);
                    acc1 = _mm256_fmadd_ps(d1, mul_sum(weights::<Q4>(p1.add(o)), by), acc1);
                    acc2 = _mm256_fmadd_ps(d2, mul_sum(weights::<Q4>(p2.add(o)), by), acc2);
                    acc3 = _mm256_fmadd_ps(d3, mul_sum(weights::<Q4>(p3.add(o)), by), acc3);
                }
                out[r] = hsum(acc0);
                out[r + 1] = hsum(acc1);
                out[r + 2] = hsum(acc2);
                out[r + 3] = hsum(acc3);
            }
            for (r, o) in out.iter_mut().enumerate().skip(quads * 4) {
                let p = w.as_ptr().add(r * row_bytes);
                let mut acc = _mm256_setzero_ps();
                for j in 0..nb {
                    let ab = a.add(j * ACT_BLOCK);
                    let by = _mm256_loadu_si256(ab.add(2) as *const __m256i);
                    let d = _mm256_set1_ps(f16_at(p.add(j * bb)) * f16_at(ab));
                    acc = _mm256_fmadd_ps(d, mul_sum(weights::<Q4>(p.add(j * bb)), by), acc);
                }
                *o = hsum(acc);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::{QMatMul, QTensor};
    use candle_core::Module;

    /// Bit-identical to candle's quantized matmul, for both formats, with a row count that
    /// is not a multiple of four.
    #[test]
    fn matches_candle() {
        let (n, k) = (203, 256);
        let w: Vec<f32> = (0..n * k)
            .map(|i| ((i * 7919 % 1013) as f32 - 506.0) / 97.0)
            .collect();
        let w = Tensor::from_vec(w, (n, k), &Device::Cpu).unwrap();
        let x: Vec<f32> = (0..2 * k)
            .map(|i| ((i * 31 % 67) as f32 - 33.0) / 7.0)
            .collect();
        let x = Tensor::from_vec(x, (1, 2, k), &Device::Cpu).unwrap();
        for dt in [GgmlDType::Q8_0, GgmlDType::Q4_0] {
            let q = QTensor::quantize(&w, dt).unwrap();
            let data = q.data().unwrap().to_vec();
            let Some(g) = QGemv::new(dt, n, k, &data) else {
                return; // CPU without AVX2: nothing to compare.
            };
            let want = QMatMul::from_qtensor(q).unwrap().forward(&x).unwrap();
            let got = g.forward(&x).unwrap();
            assert_eq!(got.dims(), want.dims());
            let a = got.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let b = want.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert_eq!(a, b, "{dt:?}");
        }
    }
}
