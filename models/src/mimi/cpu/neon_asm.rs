//! What the NEON kernels need that stable Rust has no intrinsic for: half to single precision
//! without the (unstable) `f16` vector types, through the `FCVTL`/`FCVTL2` instructions of
//! base Advanced SIMD (exact, as `half::f16::to_f32` is), and a data prefetch (`PRFM`).

use std::arch::aarch64::{float32x4_t, uint16x8_t};
use std::arch::asm;

/// Widens eight f16 bit patterns to two vectors of four f32 (low half first).
#[inline(always)]
pub(crate) fn widen8(h: uint16x8_t) -> (float32x4_t, float32x4_t) {
    let lo: float32x4_t;
    let hi: float32x4_t;
    // SAFETY: FCVTL/FCVTL2 read only the input register and write only the outputs; every
    // aarch64 CPU has them (Advanced SIMD is part of the base architecture).
    unsafe {
        asm!(
            "fcvtl {lo:v}.4s, {h:v}.4h",
            "fcvtl2 {hi:v}.4s, {h:v}.8h",
            h = in(vreg) h,
            lo = out(vreg) lo,
            hi = out(vreg) hi,
            options(pure, nomem, nostack, preserves_flags),
        );
    }
    (lo, hi)
}

/// Hints the cache line at `p` into L1 for reading. Never faults, whatever the address.
#[inline(always)]
pub(crate) fn prefetch(p: *const i8) {
    // SAFETY: PRFM is a hint: it reads no architectural state and cannot fault.
    unsafe {
        asm!("prfm pldl1keep, [{p}]", p = in(reg) p, options(nostack, preserves_flags, readonly));
    }
}
