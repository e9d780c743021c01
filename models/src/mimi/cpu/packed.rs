//! Weight matrices packed once, at load, for the streaming matrix kernels.
//!
//! A `[K, N]` weight is cut into panels of [`NB`] columns stored one after another
//! (`[N / NB][K][NB]`, the last panel zero-padded), so a kernel computing a block of outputs
//! reads its panel front to back, once. Entries are f32 or, to halve the bytes a step reads,
//! IEEE half precision (converted to f32 in registers; the arithmetic stays f32).

use super::arena::HugeBuf;

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

/// Panel storage.
#[derive(Debug, Clone)]
pub(crate) enum Panels {
    F32(HugeBuf<f32>),
    /// f16 bit patterns.
    F16(HugeBuf<u16>),
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
        let fill = |p: &mut [f32]| {
            for (pi, panel) in p.chunks_exact_mut(k * NB).enumerate() {
                let j0 = pi * NB;
                let cols = NB.min(n - j0);
                for (i, dst) in panel.chunks_exact_mut(NB).enumerate() {
                    dst[..cols].copy_from_slice(&w[i * n + j0..i * n + j0 + cols]);
                }
            }
        };
        let len = np * k * NB;
        let panels = match dtype {
            WeightDtype::F32 => Panels::F32(HugeBuf::new(len, fill)),
            WeightDtype::F16 => {
                let mut p = vec![0f32; len];
                fill(&mut p);
                Panels::F16(HugeBuf::new(len, |h| {
                    for (d, &v) in h.iter_mut().zip(&p) {
                        *d = half::f16::from_f32(v).to_bits();
                    }
                }))
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
