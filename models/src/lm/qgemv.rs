//! Matrix-vector products over q8_0 / q4_0 weights on x86-64 CPUs with AVX2.
//!
//! Why not candle's `QMatMul`: on AVX2-only CPUs (no VNNI) candle 0.11 runs q8_0/q4_0 decode
//! one dot product per row, converting each block's f16 scale through a runtime-dispatched
//! helper, and schedules columns over a spinning pool: measured here it reads the weights at a
//! fraction of the memory bandwidth, which is what bounds an LM step. This kernel reads the
//! weights repacked at load (groups of eight rows stored as one stream, in huge pages, see
//! [`QGemv`]), computes the eight rows of a group per pass with the activation block loaded
//! once, converts eight scales per F16C instruction, prefetches ahead and splits groups over
//! rayon. Each row's integer lanes and float arithmetic are exactly candle's
//! `vec_dot_q8_0_q8_0` / `vec_dot_q4_0_q8_0` (same activation quantization, same lane-wise
//! accumulation and horizontal sum), so results are bit-identical to the candle path.

use candle_core::quantized::k_quants::{BlockQ8_0, GgmlType};
use candle_core::quantized::GgmlDType;
use candle_core::{DType, Device, Storage, Tensor};
use rayon::prelude::*;

const QK: usize = 32;
/// How far ahead (bytes) the kernel prefetches its weight stream. The hardware prefetchers
/// alone left each core at ~15 GB/s here, well below what it can read; 2 KiB (8 blocks ahead
/// for q8_0, 16 for q4_0) measured best against 1 and 3 KiB, alternating steps on a 7B model.
#[cfg(target_arch = "x86_64")]
const PREFETCH: usize = 2048;
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

/// Rows computed together: one activation block is loaded once for all of them, and their
/// blocks are stored next to each other so that a group is one sequential stream.
const G: usize = 8;

/// 32 bytes, 32-byte aligned: the unit the repacked quants are stored in.
#[derive(Debug, Clone, Copy)]
#[repr(C, align(32))]
struct Line([u8; 32]);

/// Weight storage: 32-byte lines, on freshly mapped memory advised as transparent huge pages
/// when at least one huge page long. A 7B step streams ~8 GB; with 4 KiB pages that is two
/// million TLB misses per step, and the hardware prefetchers stop at every 4 KiB boundary.
enum Lines {
    /// `len` lines at the start of the mapping.
    Huge(super::cpu::HugeMap, usize),
    /// Shorter than a huge page.
    Small(Vec<Line>),
}

impl Lines {
    /// `len` zeroed lines.
    fn zeroed(len: usize) -> Self {
        if len * 32 >= super::cpu::HUGE {
            Lines::Huge(super::cpu::HugeMap::new(len * 32), len)
        } else {
            Lines::Small(vec![Line([0; 32]); len])
        }
    }

    fn as_slice(&self) -> &[Line] {
        match self {
            // SAFETY: the mapping holds at least len lines (zeroed or written), huge-page
            // aligned, for the lifetime of self.
            Lines::Huge(m, len) => unsafe {
                std::slice::from_raw_parts(m.as_ptr() as *const Line, *len)
            },
            Lines::Small(v) => v,
        }
    }

    fn as_bytes_mut(&mut self) -> &mut [u8] {
        match self {
            // SAFETY: as above, exclusively borrowed; Line is 32 plain bytes.
            Lines::Huge(m, len) => unsafe { std::slice::from_raw_parts_mut(m.as_ptr(), *len * 32) },
            // SAFETY: Line is 32 plain bytes, contiguous in the Vec.
            Lines::Small(v) => unsafe {
                std::slice::from_raw_parts_mut(v.as_mut_ptr() as *mut u8, v.len() * 32)
            },
        }
    }
}

impl Clone for Lines {
    fn clone(&self) -> Self {
        let src = self.as_slice();
        let mut c = Self::zeroed(src.len());
        // SAFETY: Line is plain bytes.
        let bytes =
            unsafe { std::slice::from_raw_parts(src.as_ptr() as *const u8, src.len() * 32) };
        c.as_bytes_mut().copy_from_slice(bytes);
        c
    }
}

impl std::fmt::Debug for Lines {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Lines({} bytes)", self.as_slice().len() * 32)
    }
}

/// A `[n, k]` quantized weight, repacked at load for the kernel: rows in groups of [`G`]
/// (the last padded with zero rows); per group and block, the `G` f16 scales together and
/// the `G` rows' quants together (q4_0: nibbles regrouped, see `new`). Same bytes as GGML's
/// layout, same arithmetic.
#[derive(Debug, Clone)]
pub(crate) struct QGemv {
    /// `[groups][nb][G]` f16 bits.
    scales: Vec<u16>,
    /// `[groups][nb][G][qb]` quant bytes (qb = 32 for q8_0, 16 for q4_0).
    quants: Lines,
    n: usize,
    k: usize,
    kind: Kind,
}

/// Per-call scratch, reused (one per calling thread).
#[derive(Default)]
struct Scratch {
    blocks: Vec<BlockQ8_0>,
    /// Activation scales as f32, `[m][nb]`.
    scales: Vec<f32>,
    /// Activation quants, `[m][nb]` lines of 32.
    quants: Vec<Line>,
    /// For q4_0: per activation block, eight i32 lanes of 8 * (sum of the 4 quants of each
    /// lane), the offset that unsigned nibbles carry.
    sums: Vec<Line>,
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::new(Scratch::default());
}

/// Whether this CPU runs the kernel (checked once per call site; the detection is cached).
#[cfg(target_arch = "x86_64")]
fn cpu_ok() -> bool {
    super::cpu::has_avx2_fma() && is_x86_feature_detected!("f16c")
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
        let nb = k / QK;
        let bb = kind.block_bytes();
        let qb = bb - 2;
        let groups = n.div_ceil(G);
        let mut scales = vec![0u16; groups * nb * G];
        let mut quants = Lines::zeroed(groups * nb * G * qb / 32);
        let qbytes = quants.as_bytes_mut();
        for r in 0..n {
            let (g, i) = (r / G, r % G);
            for j in 0..nb {
                let src = &data[(r * nb + j) * bb..(r * nb + j + 1) * bb];
                scales[(g * nb + j) * G + i] = u16::from_le_bytes([src[0], src[1]]);
                let at = ((g * nb + j) * G + i) * qb;
                match kind {
                    Kind::Q8_0 => qbytes[at..at + qb].copy_from_slice(&src[2..]),
                    Kind::Q4_0 => {
                        // Rows 2p and 2p+1 share one 32-byte line: byte b holds value b of
                        // the even row in its low nibble and of the odd row in its high one,
                        // so that one load and two masks give both rows' 32 values in order.
                        // (GGML: value b < 16 is qs[b] & 15, value b >= 16 is qs[b - 16] >> 4.)
                        let line = ((g * nb + j) * G + (i & !1)) * qb;
                        let shift = if i % 2 == 0 { 0 } else { 4 };
                        for b in 0..QK {
                            let v = if b < 16 {
                                src[2 + b] & 15
                            } else {
                                src[2 + b - 16] >> 4
                            };
                            qbytes[line + b] |= v << shift;
                        }
                    }
                }
            }
        }
        Some(Self {
            scales,
            quants,
            n,
            k,
            kind,
        })
    }

    /// Bytes held.
    pub(crate) fn bytes(&self) -> usize {
        self.scales.len() * 2 + self.quants.as_slice().len() * 32
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
            // The scratch is taken out of the thread-local, not borrowed: `gemv` forks into
            // rayon, and a thread waiting on its fork runs other jobs, which may call
            // `forward` again on this thread. A re-entrant call finds an empty scratch (and
            // allocates) instead of panicking on a second `borrow_mut`.
            let mut scratch = SCRATCH.with(|cell| cell.take());
            {
                let sc = &mut scratch;
                sc.blocks.resize(m * nb, BlockQ8_0::zeros());
                sc.scales.resize(m * nb, 0.0);
                sc.quants.resize(m * nb, Line([0; 32]));
                for (row, blocks) in xs.chunks_exact(k).zip(sc.blocks.chunks_exact_mut(nb)) {
                    // candle's own activation quantization, so that results stay identical.
                    BlockQ8_0::from_float(row, blocks);
                }
                // SAFETY: BlockQ8_0 is repr(C), 34 bytes (f16 + [i8; 32], asserted by
                // candle), so the blocks are `len * 34` initialised bytes.
                let bytes = unsafe {
                    std::slice::from_raw_parts(
                        sc.blocks.as_ptr() as *const u8,
                        sc.blocks.len() * ACT_BLOCK,
                    )
                };
                for ((b, d), q) in bytes
                    .chunks_exact(ACT_BLOCK)
                    .zip(sc.scales.iter_mut())
                    .zip(sc.quants.iter_mut())
                {
                    *d = half::f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32();
                    q.0.copy_from_slice(&b[2..]);
                }
                if self.kind == Kind::Q4_0 {
                    sc.sums.resize(m * nb, Line([0; 32]));
                    for (q, o) in sc.quants.iter().zip(sc.sums.iter_mut()) {
                        let mut lanes = [0i32; 8];
                        for (l, four) in lanes.iter_mut().zip(q.0.chunks_exact(4)) {
                            *l = 8 * four.iter().map(|&b| b as i8 as i32).sum::<i32>();
                        }
                        for (dst, l) in o.0.chunks_exact_mut(4).zip(lanes) {
                            dst.copy_from_slice(&l.to_ne_bytes());
                        }
                    }
                }
                for (r, dst) in out.chunks_exact_mut(self.n).enumerate() {
                    let sums = if self.kind == Kind::Q4_0 {
                        &sc.sums[r * nb..(r + 1) * nb]
                    } else {
                        &[][..]
                    };
                    self.gemv(
                        &sc.scales[r * nb..(r + 1) * nb],
                        &sc.quants[r * nb..(r + 1) * nb],
                        sums,
                        dst,
                    );
                }
            }
            SCRATCH.with(|cell| cell.replace(scratch));
        }
        let mut shape = dims.to_vec();
        if let Some(last) = shape.last_mut() {
            *last = self.n;
        }
        Tensor::from_vec(out, shape, &Device::Cpu)
    }

    /// One activation row against all weight rows, split over rayon in chunks of whole
    /// groups; chunks are small enough to rebalance when a core is busy elsewhere.
    fn gemv(&self, ad: &[f32], aq: &[Line], asums: &[Line], dst: &mut [f32]) {
        let threads = rayon::current_num_threads().max(1);
        let nb = self.k / QK;
        let qb = self.kind.block_bytes() - 2;
        let groups = self.n.div_ceil(G);
        let chunk = (groups / (threads * 8)).max(8);
        let run = |(ci, out): (usize, &mut [f32])| {
            let g0 = ci * chunk;
            let gs = out.len().div_ceil(G);
            let sc = &self.scales[g0 * nb * G..(g0 + gs) * nb * G];
            let q = &self.quants.as_slice()[g0 * nb * G * qb / 32..(g0 + gs) * nb * G * qb / 32];
            groups_dot(self.kind, nb, sc, q, ad, aq, asums, out);
        };
        if groups <= chunk {
            run((0, dst));
        } else {
            dst.par_chunks_mut(chunk * G).enumerate().for_each(run);
        }
    }
}

/// `out[i] = dot(row i, act)` for the rows of the groups in `sc`/`q`.
#[allow(clippy::too_many_arguments)]
fn groups_dot(
    kind: Kind,
    nb: usize,
    sc: &[u16],
    q: &[Line],
    ad: &[f32],
    aq: &[Line],
    asums: &[Line],
    out: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: QGemv::new only exists on CPUs with avx2, fma and f16c; slices are sized
        // by construction (whole groups of nb blocks; out.len() <= groups * G; asums has nb
        // lines for q4_0).
        unsafe {
            match kind {
                Kind::Q8_0 => avx::groups::<false>(nb, sc, q, ad, aq, asums, out),
                Kind::Q4_0 => avx::groups::<true>(nb, sc, q, ad, aq, asums, out),
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (kind, nb, sc, q, ad, aq, asums, out);
        unreachable!("QGemv::new refuses non-x86-64 CPUs");
    }
}

#[cfg(target_arch = "x86_64")]
mod avx {
    use super::super::cpu::{hsum8, prefetch};
    use super::{Line, G, PREFETCH};
    use core::arch::x86_64::*;

    /// One q4_0 row-block's lanes: `sum(u * a) - 8 * sum(a)` per 4 bytes with `u` the
    /// unsigned nibbles, which is exactly candle's `sum((u - 8) * a)` (all integer, no
    /// saturation: |u * a| <= 15 * 127), converted to f32 as candle does.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn q4_lanes(u: __m256i, a: __m256i, sum8: __m256i) -> __m256 {
        let dot = _mm256_madd_epi16(_mm256_set1_epi16(1), _mm256_maddubs_epi16(u, a));
        _mm256_cvtepi32_ps(_mm256_sub_epi32(dot, sum8))
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

    /// # Safety
    /// avx2, fma and f16c present; `sc`/`q` hold whole groups of `nb` blocks in the
    /// [`super::QGemv`] layout, `out.len() <= groups * G`; `ad`/`aq` (and for q4_0 `asums`)
    /// hold `nb` blocks.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn groups<const Q4: bool>(
        nb: usize,
        sc: &[u16],
        q: &[Line],
        ad: &[f32],
        aq: &[Line],
        asums: &[Line],
        out: &mut [f32],
    ) {
        let qb = if Q4 { 16 } else { 32 };
        let groups = sc.len() / (nb * G);
        debug_assert!(out.len() <= groups * G);
        debug_assert_eq!(q.len() * 32, groups * nb * G * qb);
        debug_assert!(ad.len() >= nb && aq.len() >= nb);
        debug_assert!(!Q4 || asums.len() >= nb);
        let qp = q.as_ptr() as *const u8;
        let mut d = [0f32; G];
        let low = _mm256_set1_epi8(0x0F);
        unsafe {
            for g in 0..groups {
                let mut acc = [_mm256_setzero_ps(); G];
                let gs = sc.as_ptr().add(g * nb * G);
                let gq = qp.add(g * nb * G * qb);
                for j in 0..nb {
                    let by = _mm256_load_si256(aq.as_ptr().add(j) as *const __m256i);
                    // The G scale products, each f16(w) * f16(a) in f32 as candle forms it.
                    let s = _mm256_cvtph_ps(_mm_loadu_si128(gs.add(j * G) as *const __m128i));
                    _mm256_storeu_ps(
                        d.as_mut_ptr(),
                        _mm256_mul_ps(s, _mm256_set1_ps(*ad.get_unchecked(j))),
                    );
                    let bq = gq.add(j * G * qb);
                    prefetch(bq.wrapping_add(PREFETCH), G * qb);
                    if Q4 {
                        let s8 = _mm256_load_si256(asums.as_ptr().add(j) as *const __m256i);
                        for p in 0..G / 2 {
                            let line = _mm256_load_si256(bq.add(p * 32) as *const __m256i);
                            let u0 = _mm256_and_si256(line, low);
                            let u1 = _mm256_and_si256(_mm256_srli_epi16::<4>(line), low);
                            let (i0, i1) = (2 * p, 2 * p + 1);
                            acc[i0] = _mm256_fmadd_ps(
                                _mm256_broadcast_ss(&d[i0]),
                                q4_lanes(u0, by, s8),
                                acc[i0],
                            );
                            acc[i1] = _mm256_fmadd_ps(
                                _mm256_broadcast_ss(&d[i1]),
                                q4_lanes(u1, by, s8),
                                acc[i1],
                            );
                        }
                    } else {
                        for (i, a) in acc.iter_mut().enumerate() {
                            let w = _mm256_load_si256(bq.add(i * qb) as *const __m256i);
                            *a = _mm256_fmadd_ps(_mm256_broadcast_ss(&d[i]), mul_sum(w, by), *a);
                        }
                    }
                }
                let o = g * G;
                for (i, a) in acc.iter().enumerate() {
                    if let Some(dst) = out.get_mut(o + i) {
                        *dst = hsum8(*a);
                    }
                }
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
        // The last: q8_0 quants over 2 MiB, on a huge-page mapping rather than the heap.
        for (n, k) in [(203, 256), (64, 1024), (2112, 1024)] {
            matches_candle_at(n, k);
        }
    }

    fn matches_candle_at(n: usize, k: usize) {
        let w: Vec<f32> = (0..n * k)
            .map(|i| ((i * 7919 % 1013) as f32 - 506.0) / 97.0 * (1 + i % 5) as f32)
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
