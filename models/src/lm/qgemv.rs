//! Products of M activation rows with q8_0 / q4_0 weights on x86-64 CPUs (AVX2, and
//! AVX-512 VNNI where the CPU has it): the LM's linear layers, M = conversations in a step.
//!
//! Why not candle's `QMatMul`: on AVX2-only CPUs candle 0.11 runs q8_0/q4_0 decode one dot
//! product per row through a spinning pool and reads the weights at a fraction of the memory
//! bandwidth, which is what bounds an LM step; its AVX-512 VNNI path batches rows but
//! quantizes activations its own way, so its numbers depend on the CPU. This kernel reads the
//! weights repacked at load (groups of eight rows stored as one stream, in huge pages, see
//! [`QGemv`]) exactly once per call whatever M is: per block, each group's weights are loaded
//! once and all M activation rows are computed against them while they sit in registers or
//! L1. Within a group, vector lane `i` is weight row `i` (the quants interleaved four bytes
//! per row), so one `vpdpbusd` (AVX-512 VNNI, 16 rows) or `maddubs` + `madd` (AVX2, 8 rows)
//! advances every row of the group by four products, and a block's whole integer dot
//! product ends in one lane: the float work is one multiply, convert and FMA per 16 (or 8)
//! row-blocks, which is what lets M rows cost little more than one.
//!
//! Numerics, the same bits on every CPU and path (ggml's q8_0/q4_0 block semantics, our
//! accumulation order): activations are quantized per 32-block by candle's scalar
//! `from_float` (f16 scale `amax / 127`, `round(x / scale)`); per block, the exact integer
//! dot product `s = sum(w_i * a_i)` (|s| < 2^24, so exact in f32 too) and
//! `d = f32(w_scale) * f32(a_scale)`; each row accumulates `acc = fma(d, s, acc)` over the
//! blocks in order from 0. The tests hold every path bit-equal to a scalar model of exactly
//! this. (candle's own CPU paths sum eight partial lanes per row, or quantize activations
//! differently on VNNI CPUs: they agree to about 1 %, not to the bit.)

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
/// How far ahead (bytes) the kernel also prefetches its weight stream into L2 only. With
/// several activation rows a block takes several times longer to compute, so fewer blocks are
/// in flight and the near prefetch alone no longer keeps enough reads outstanding: L1 has few
/// miss buffers, L2 has many. 16 KiB took q8_0 M = 4 from 1.33x to 1.06-1.09x of M = 1 and
/// M = 8 from 1.37-1.48x to 1.09-1.14x, M = 1 unchanged (8, 16 and 32 KiB measured, M = 1,
/// 4, 8 taken in turn, 98 and 360 MB matrices, 2026-12-08).
#[cfg(target_arch = "x86_64")]
const PREFETCH_L2: usize = 16384;
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

/// Rows computed together, one per 32-bit vector lane of a 512-bit register (two 256-bit
/// ones on AVX2); their blocks are interleaved so that a group is one sequential stream.
const G: usize = 16;

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

/// Instruction sets the kernel has a path for, best first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Isa {
    /// AVX-512 F/BW/VL + VNNI: `vpdpbusd` on two weight rows per instruction.
    Avx512Vnni,
    /// AVX2 + FMA + F16C.
    Avx2,
}

impl Isa {
    /// The best path this CPU runs, `None` without AVX2/FMA/F16C (candle's path is used).
    pub(crate) fn detect() -> Option<Isa> {
        #[cfg(target_arch = "x86_64")]
        {
            if !(super::cpu::has_avx2_fma() && is_x86_feature_detected!("f16c")) {
                return None;
            }
            let vnni = is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512vl")
                && is_x86_feature_detected!("avx512vnni");
            Some(if vnni { Isa::Avx512Vnni } else { Isa::Avx2 })
        }
        #[cfg(not(target_arch = "x86_64"))]
        None
    }

    /// Every path this CPU runs (for tests: each must give the same bits).
    #[cfg(test)]
    pub(crate) fn available() -> Vec<Isa> {
        match Self::detect() {
            Some(Isa::Avx512Vnni) => vec![Isa::Avx512Vnni, Isa::Avx2],
            Some(Isa::Avx2) => vec![Isa::Avx2],
            None => vec![],
        }
    }
}

/// A `[n, k]` quantized weight, repacked at load for the kernel: rows in groups of [`G`]
/// (the last padded with zero rows); per group and block, the `G` f16 scales together, then
/// the quants by four-value step `t` (0..8): for each `t`, the `G` rows' values `4t..4t+4`
/// (q8_0: one byte each, 64 bytes per `t`; stored as unsigned `w + 128` on the VNNI path,
/// which `vpdpbusd` takes). q4_0: steps `2u` and `2u + 1` share 64 bytes, low and high
/// nibbles. Same values as GGML's layout.
#[derive(Debug, Clone)]
pub(crate) struct QGemv {
    /// `[groups][nb][G]` f16 bits.
    scales: Vec<u16>,
    /// `[groups][nb][G * qb]` quant bytes (qb = 32 for q8_0, 16 for q4_0), interleaved.
    quants: Lines,
    n: usize,
    k: usize,
    kind: Kind,
    isa: Isa,
}

/// Per-call scratch, reused (one per calling thread).
#[derive(Default)]
struct Scratch {
    blocks: Vec<BlockQ8_0>,
    /// Activation scales as f32, `[m][nb]`.
    scales: Vec<f32>,
    /// Activation quants, `[m][nb]` lines of 32.
    quants: Vec<Line>,
    /// Per activation block, `-bias * (sum of its quants)`: the offset that unsigned weight
    /// values carry (bias 8 for q4_0 nibbles, 128 for q8_0 on the VNNI path); `[m][nb]`,
    /// zero for q8_0 on AVX2.
    neg: Vec<i32>,
    /// Results by group, `[groups][m][G]`.
    out_t: Vec<f32>,
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::new(Scratch::default());
}

/// The activations of one call, quantized: `m` rows of `nb` blocks.
#[derive(Clone, Copy)]
struct Acts<'a> {
    m: usize,
    nb: usize,
    scales: &'a [f32],
    quants: &'a [Line],
    neg: &'a [i32],
}

impl QGemv {
    /// Takes `[n, k]` GGML blocks of `dtype` when this CPU and format are supported.
    pub(crate) fn new(dtype: GgmlDType, n: usize, k: usize, data: &[u8]) -> Option<Self> {
        Self::with_isa(Isa::detect()?, dtype, n, k, data)
    }

    /// [`QGemv::new`] for a given path (which the caller knows this CPU runs).
    pub(crate) fn with_isa(
        isa: Isa,
        dtype: GgmlDType,
        n: usize,
        k: usize,
        data: &[u8],
    ) -> Option<Self> {
        let kind = match dtype {
            GgmlDType::Q8_0 => Kind::Q8_0,
            GgmlDType::Q4_0 => Kind::Q4_0,
            _ => return None,
        };
        if k == 0 || !k.is_multiple_of(QK) || data.len() != n * (k / QK) * kind.block_bytes() {
            return None;
        }
        let nb = k / QK;
        let bb = kind.block_bytes();
        let qb = bb - 2;
        let groups = n.div_ceil(G);
        let mut scales = vec![0u16; groups * nb * G];
        let mut quants = Lines::zeroed(groups * nb * G * qb / 32);
        let qbytes = quants.as_bytes_mut();
        // Unsigned q8_0 for vpdpbusd: w + 128 is w's byte with the top bit flipped.
        let flip = if isa == Isa::Avx512Vnni { 0x80 } else { 0 };
        for r in 0..n {
            let (g, i) = (r / G, r % G);
            for j in 0..nb {
                let src = &data[(r * nb + j) * bb..(r * nb + j + 1) * bb];
                scales[(g * nb + j) * G + i] = u16::from_le_bytes([src[0], src[1]]);
                let base = (g * nb + j) * G * qb;
                for v in 0..QK {
                    // Value v of the row (GGML q4_0: v < 16 is qs[v] & 15, v >= 16 is
                    // qs[v - 16] >> 4).
                    let (t, b) = (v / 4, v % 4);
                    match kind {
                        Kind::Q8_0 => qbytes[base + (t * G + i) * 4 + b] = src[2 + v] ^ flip,
                        Kind::Q4_0 => {
                            let q = if v < 16 {
                                src[2 + v] & 15
                            } else {
                                src[2 + v - 16] >> 4
                            };
                            let at = base + ((t / 2) * G + i) * 4 + b;
                            qbytes[at] |= q << (4 * (t % 2));
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
            isa,
        })
    }

    /// Bytes held.
    pub(crate) fn bytes(&self) -> usize {
        self.scales.len() * 2 + self.quants.as_slice().len() * 32
    }

    /// The bias unsigned weight values carry on this path (0: signed, no offset).
    fn bias(&self) -> i32 {
        match (self.kind, self.isa) {
            (Kind::Q4_0, _) => 8,
            (Kind::Q8_0, Isa::Avx512Vnni) => 128,
            (Kind::Q8_0, Isa::Avx2) => 0,
        }
    }

    /// `x [.., k]` (f32, CPU) times the weight's transpose: `[.., n]`. All rows of `x` go
    /// through one pass over the weights.
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
        let mut out = vec![0f32; m * self.n];
        {
            let (storage, layout) = x.storage_and_layout();
            let Storage::Cpu(cpu) = &*storage else {
                candle_core::bail!("qgemv: input not on the CPU");
            };
            let all = cpu.as_slice::<f32>()?;
            let xs = &all[layout.start_offset()..layout.start_offset() + m * k];
            // The scratch is taken out of the thread-local, not borrowed: `gemm` forks into
            // rayon, and a thread waiting on its fork runs other jobs, which may call
            // `forward` again on this thread. A re-entrant call finds an empty scratch (and
            // allocates) instead of panicking on a second `borrow_mut`.
            let mut scratch = SCRATCH.with(|cell| cell.take());
            self.forward_rows(xs, m, &mut scratch, &mut out);
            SCRATCH.with(|cell| cell.replace(scratch));
        }
        let mut shape = dims.to_vec();
        if let Some(last) = shape.last_mut() {
            *last = self.n;
        }
        Tensor::from_vec(out, shape, &Device::Cpu)
    }

    /// `out [m][n] = xs [m][k] . W^T` through `sc`.
    fn forward_rows(&self, xs: &[f32], m: usize, sc: &mut Scratch, out: &mut [f32]) {
        let nb = self.k / QK;
        quantize_acts(xs, self.k, self.bias(), sc);
        let groups = self.n.div_ceil(G);
        sc.out_t.clear();
        sc.out_t.resize(groups * G * m, 0.0);
        let acts = Acts {
            m,
            nb,
            scales: &sc.scales,
            quants: &sc.quants,
            neg: &sc.neg,
        };
        self.gemm(acts, &mut sc.out_t);
        for (g, rows) in sc.out_t.chunks_exact(m * G).enumerate() {
            let cols = G.min(self.n - g * G);
            for (r, v) in rows.chunks_exact(G).enumerate() {
                out[r * self.n + g * G..][..cols].copy_from_slice(&v[..cols]);
            }
        }
    }

    /// All activation rows against all weight rows, split over rayon in chunks of whole
    /// groups; chunks are small enough to rebalance when a core is busy elsewhere.
    fn gemm(&self, acts: Acts<'_>, out_t: &mut [f32]) {
        let threads = rayon::current_num_threads().max(1);
        let nb = acts.nb;
        let qb = self.kind.block_bytes() - 2;
        let groups = self.n.div_ceil(G);
        let chunk = (groups / (threads * 8)).max(8);
        let run = |(ci, out): (usize, &mut [f32])| {
            let g0 = ci * chunk;
            let gs = out.len() / (G * acts.m);
            let sc = &self.scales[g0 * nb * G..(g0 + gs) * nb * G];
            let q = &self.quants.as_slice()[g0 * nb * G * qb / 32..(g0 + gs) * nb * G * qb / 32];
            groups_dot(self.kind, self.isa, sc, q, acts, out);
        };
        if groups <= chunk {
            run((0, out_t));
        } else {
            out_t
                .par_chunks_mut(chunk * G * acts.m)
                .enumerate()
                .for_each(run);
        }
    }
}

/// Quantizes `xs` (rows of `k`) into `sc`'s scales, quants and (bias != 0) offsets.
fn quantize_acts(xs: &[f32], k: usize, bias: i32, sc: &mut Scratch) {
    let blocks = xs.len() / QK;
    sc.blocks.resize(blocks, BlockQ8_0::zeros());
    sc.scales.resize(blocks, 0.0);
    sc.quants.resize(blocks, Line([0; 32]));
    for (row, bl) in xs.chunks_exact(k).zip(sc.blocks.chunks_exact_mut(k / QK)) {
        // candle's scalar activation quantization (ggml's quantize_row_q8_0).
        BlockQ8_0::from_float(row, bl);
    }
    // SAFETY: BlockQ8_0 is repr(C), 34 bytes (f16 + [i8; 32], asserted by candle), so the
    // blocks are `len * 34` initialised bytes.
    let bytes =
        unsafe { std::slice::from_raw_parts(sc.blocks.as_ptr() as *const u8, blocks * ACT_BLOCK) };
    for ((b, d), q) in bytes
        .chunks_exact(ACT_BLOCK)
        .zip(sc.scales.iter_mut())
        .zip(sc.quants.iter_mut())
    {
        *d = half::f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32();
        q.0.copy_from_slice(&b[2..]);
    }
    sc.neg.clear();
    sc.neg.extend(sc.quants.iter().map(|q| {
        let sum: i32 = q.0.iter().map(|&b| b as i8 as i32).sum();
        -bias * sum
    }));
}

/// `out_t[(g * m + r) * G + i] = dot(weight row i of group g, activation row r)` for the
/// groups in `sc`/`q`.
fn groups_dot(kind: Kind, isa: Isa, sc: &[u16], q: &[Line], acts: Acts<'_>, out_t: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: a QGemv with `isa` only exists on CPUs with that ISA (`Isa::detect`, or a
        // caller that checked it); slices are sized by construction (whole groups of nb
        // blocks, out_t has G * m entries per group, acts hold m rows of nb blocks and, for
        // the paths that read them, their offsets).
        unsafe {
            match (isa, kind) {
                (Isa::Avx2, Kind::Q8_0) => avx2::groups::<false>(sc, q, acts, out_t),
                (Isa::Avx2, Kind::Q4_0) => avx2::groups::<true>(sc, q, acts, out_t),
                (Isa::Avx512Vnni, Kind::Q8_0) => avx512::groups::<false>(sc, q, acts, out_t),
                (Isa::Avx512Vnni, Kind::Q4_0) => avx512::groups::<true>(sc, q, acts, out_t),
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (kind, isa, sc, q, acts, out_t);
        unreachable!("Isa::detect refuses non-x86-64 CPUs");
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
#[cfg(test)]
mod tests;
