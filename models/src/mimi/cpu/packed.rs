//! Weight matrices packed once, at load, for the streaming matrix kernels.
//!
//! A `[K, N]` weight is cut into panels of [`NB`] columns stored one after another
//! (`[N / NB][K][NB]`, the last panel zero-padded), so a kernel computing a block of outputs
//! reads its panel front to back, once. Entries are f32 or, to halve the bytes a step reads,
//! IEEE half precision (converted to f32 in registers; the arithmetic stays f32).

/// Output columns per panel (two AVX2 vectors, four NEON vectors).
pub(crate) const NB: usize = 16;

/// How Mimi's weights are stored in memory on the CPU; arithmetic is f32 either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WeightDtype {
    /// As in the checkpoint (the reference's numbers).
    #[default]
    F32,
    /// IEEE half precision (round to nearest): half the memory and memory traffic.
    F16,
}

impl WeightDtype {
    /// Parses `f32` or `f16`.
    pub fn parse(s: &str) -> Option<WeightDtype> {
        match s.trim().to_ascii_lowercase().as_str() {
            "f32" => Some(WeightDtype::F32),
            "f16" => Some(WeightDtype::F16),
            _ => None,
        }
    }

    /// `f32` or `f16`.
    pub fn name(self) -> &'static str {
        match self {
            WeightDtype::F32 => "f32",
            WeightDtype::F16 => "f16",
        }
    }
}

/// A zeroed vector whose pages are advised as transparent huge pages before they are first
/// touched: a frame streams hundreds of megabytes of weights, and 4 KiB pages would cost a
/// TLB miss and a prefetcher stop every 4 KiB.
fn huge_vec<T: Copy + Default>(len: usize) -> Vec<T> {
    let mut v: Vec<T> = Vec::with_capacity(len);
    crate::lm::cpu::advise(v.as_ptr() as *const u8, len * std::mem::size_of::<T>());
    v.resize(len, T::default());
    v
}

/// Panel storage.
#[derive(Debug, Clone)]
pub(crate) enum Panels {
    F32(Vec<f32>),
    /// f16 bit patterns.
    F16(Vec<u16>),
}

/// A `[K, N]` weight in panels.
#[derive(Debug, Clone)]
pub(crate) struct PackedMat {
    /// Rows (the reduction length).
    pub(crate) k: usize,
    /// Columns (outputs).
    pub(crate) n: usize,
    pub(crate) panels: Panels,
}

impl PackedMat {
    /// Packs row-major `w` (`[k, n]`).
    pub(crate) fn new(w: &[f32], k: usize, n: usize, dtype: WeightDtype) -> PackedMat {
        assert_eq!(
            w.len(),
            k * n,
            "packed weight: {k} x {n} from {} values",
            w.len()
        );
        let np = n.div_ceil(NB);
        let mut p = huge_vec::<f32>(np * k * NB);
        for (pi, panel) in p.chunks_exact_mut(k * NB).enumerate() {
            let j0 = pi * NB;
            let cols = NB.min(n - j0);
            for (i, dst) in panel.chunks_exact_mut(NB).enumerate() {
                dst[..cols].copy_from_slice(&w[i * n + j0..i * n + j0 + cols]);
            }
        }
        let panels = match dtype {
            WeightDtype::F32 => Panels::F32(p),
            WeightDtype::F16 => {
                let mut h = huge_vec::<u16>(p.len());
                for (d, &v) in h.iter_mut().zip(&p) {
                    *d = half::f16::from_f32(v).to_bits();
                }
                Panels::F16(h)
            }
        };
        PackedMat { k, n, panels }
    }

    /// Packs `w` given as `[n, k]` row-major (PyTorch's `Linear` layout).
    pub(crate) fn from_rows(w: &[f32], n: usize, k: usize, dtype: WeightDtype) -> PackedMat {
        let mut t = vec![0f32; k * n];
        for (j, row) in w.chunks_exact(k).enumerate() {
            for (i, &v) in row.iter().enumerate() {
                t[i * n + j] = v;
            }
        }
        PackedMat::new(&t, k, n, dtype)
    }

    /// Number of panels.
    pub(crate) fn num_panels(&self) -> usize {
        self.n.div_ceil(NB)
    }

    /// Bytes held.
    pub(crate) fn bytes(&self) -> usize {
        match &self.panels {
            Panels::F32(v) => v.len() * 4,
            Panels::F16(v) => v.len() * 2,
        }
    }

    /// Entry `[i, j]` as f32 (tests and reference paths).
    #[cfg(test)]
    pub(crate) fn at(&self, i: usize, j: usize) -> f32 {
        let o = (j / NB) * self.k * NB + i * NB + j % NB;
        match &self.panels {
            Panels::F32(v) => v[o],
            Panels::F16(v) => half::f16::from_bits(v[o]).to_f32(),
        }
    }
}
