//! Which vector instructions the CPU kernels use, chosen once at run time.
//!
//! Every kernel has a generic (scalar, auto-vectorised) version that defines its arithmetic:
//! a fixed order of fused multiply-adds where the target has them in hardware (aarch64 always
//! does), separate multiplies and adds elsewhere. The AVX2/FMA and NEON versions perform the
//! same operations in the same order, lane by lane, so on aarch64 the NEON path gives the same
//! bits as the generic one, and on x86-64 AVX2 gives the bits of the generic fused variant.

use std::sync::OnceLock;

/// A kernel family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Isa {
    /// Portable Rust; fused multiply-add only where the hardware always has it.
    Generic,
    /// x86-64 with AVX2, FMA and F16C (detected at run time).
    #[cfg(target_arch = "x86_64")]
    Avx2,
    /// aarch64 Advanced SIMD (always present on aarch64).
    #[cfg(target_arch = "aarch64")]
    Neon,
}

/// Environment variable that forces the generic kernels (`generic`) or the best available
/// (`auto`, the default): a diagnostic for comparing paths, e.g. instruction counts.
pub(crate) const ENV: &str = "MOSHID_MIMI_KERNELS";

impl Isa {
    /// The best family this CPU supports, unless [`ENV`] says `generic`.
    pub(crate) fn detect() -> Isa {
        static ISA: OnceLock<Isa> = OnceLock::new();
        *ISA.get_or_init(|| {
            if std::env::var(ENV).is_ok_and(|v| v.eq_ignore_ascii_case("generic")) {
                return Isa::Generic;
            }
            Isa::best()
        })
    }

    /// The best family this CPU supports.
    pub(crate) fn best() -> Isa {
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
        {
            return Isa::Avx2;
        }
        #[cfg(target_arch = "aarch64")]
        return Isa::Neon;
        #[allow(unreachable_code)]
        Isa::Generic
    }

    /// Every family this CPU can run (the generic one first), for tests.
    #[cfg(test)]
    pub(crate) fn available() -> Vec<Isa> {
        let mut v = vec![Isa::Generic];
        if Isa::best() != Isa::Generic {
            v.push(Isa::best());
        }
        v
    }

    /// A short name for reports.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Isa::Generic => "generic",
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => "avx2",
            #[cfg(target_arch = "aarch64")]
            Isa::Neon => "neon",
        }
    }
}

/// Whether the generic kernels use fused multiply-add: only where it is a single instruction
/// on every CPU of the target (a library call would be far slower than separate operations).
pub(crate) const FUSED: bool = cfg!(target_arch = "aarch64");

/// `a * b + c`, fused when `F`.
#[inline(always)]
pub(crate) fn madd<const F: bool>(a: f32, b: f32, c: f32) -> f32 {
    if F {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}
