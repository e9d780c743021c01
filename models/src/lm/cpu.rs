//! What the CPU kernels (`qgemv`, `attend`) share: transparent huge pages for the big
//! buffers read every step (weights, KV cache), software prefetch, the x86-64 feature check
//! and an 8-lane horizontal sum.
//!
//! An LM step streams gigabytes: with 4 KiB pages that is a TLB miss every 4 KiB and the
//! hardware prefetchers stop at each page boundary. Linux backs a range advised with
//! `MADV_HUGEPAGE` by 2 MiB pages when it is first touched (THP in `madvise` or `always`
//! mode, the default on Debian and on L4T).

/// Size of a transparent huge page on x86-64 and on aarch64 with 4 KiB base pages.
pub(crate) const HUGE: usize = 2 << 20;

/// Advises the whole 2 MiB pages inside `[ptr, ptr + len)` as huge-page candidates. Purely a
/// hint: on kernels without THP, or for ranges shorter than a huge page, nothing happens.
pub(crate) fn advise(ptr: *const u8, len: usize) {
    let start = (ptr as usize).next_multiple_of(HUGE);
    let end = (ptr as usize + len) / HUGE * HUGE;
    if end <= start {
        return;
    }
    #[cfg(target_os = "linux")]
    // SAFETY: madvise(MADV_HUGEPAGE) changes no contents and no permissions; the range lies
    // inside memory the caller owns.
    unsafe {
        libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE);
    }
}

/// Fresh anonymous memory on a 2 MiB boundary, advised as huge pages before its first touch,
/// released on drop. Mapped afresh rather than taken from the heap: memory the heap hands back
/// may already be backed by small pages, which the advice does not change (Mimi's weights,
/// allocated from the heap one matrix at a time, got 65-92 MB of 351 on huge pages; mapped,
/// 335). The memory reads as zeros.
pub(crate) struct HugeMap {
    ptr: std::ptr::NonNull<u8>,
    size: usize,
}

// SAFETY: plain memory owned by this value alone, like a Box<[u8]>.
unsafe impl Send for HugeMap {}
// SAFETY: as above; `&HugeMap` hands out only its address.
unsafe impl Sync for HugeMap {}

impl HugeMap {
    /// At least `bytes` (rounded up to whole huge pages, at least one). Panics when the
    /// system has no memory left for it, as a `Vec` would.
    pub(crate) fn new(bytes: usize) -> HugeMap {
        let size = bytes.max(1).next_multiple_of(HUGE);
        let Some(ptr) = map_aligned(size) else {
            panic!("out of memory: cannot map {size} bytes for model weights")
        };
        advise(ptr.as_ptr(), size);
        HugeMap { ptr, size }
    }

    /// The first byte.
    pub(crate) fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// Bytes held (a multiple of [`HUGE`]).
    pub(crate) fn size(&self) -> usize {
        self.size
    }
}

/// Maps `size` bytes at a multiple of [`HUGE`]: maps one huge page more, then unmaps the
/// unaligned head and the tail.
#[cfg(unix)]
fn map_aligned(size: usize) -> Option<std::ptr::NonNull<u8>> {
    let span = size + HUGE;
    // SAFETY: an anonymous private mapping at an address the kernel picks; no memory of ours
    // is affected.
    let raw = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            span,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if raw == libc::MAP_FAILED {
        return None;
    }
    let start = raw as usize;
    let aligned = start.next_multiple_of(HUGE);
    let (head, tail) = (aligned - start, start + span - (aligned + size));
    // SAFETY: both ranges lie inside the mapping just made and are not used.
    unsafe {
        if head > 0 {
            libc::munmap(raw, head);
        }
        if tail > 0 {
            libc::munmap((aligned + size) as *mut libc::c_void, tail);
        }
    }
    std::ptr::NonNull::new(aligned as *mut u8)
}

#[cfg(not(unix))]
fn map_aligned(size: usize) -> Option<std::ptr::NonNull<u8>> {
    let layout = std::alloc::Layout::from_size_align(size, HUGE).ok()?;
    // SAFETY: non-zero size; freed in Drop with the same layout.
    std::ptr::NonNull::new(unsafe { std::alloc::alloc_zeroed(layout) })
}

impl Drop for HugeMap {
    fn drop(&mut self) {
        // SAFETY: mapped (or allocated) in `new` with this size, released once.
        #[cfg(unix)]
        unsafe {
            libc::munmap(self.ptr.as_ptr() as *mut libc::c_void, self.size);
        }
        #[cfg(not(unix))]
        unsafe {
            let layout = std::alloc::Layout::from_size_align_unchecked(self.size, HUGE);
            std::alloc::dealloc(self.ptr.as_ptr(), layout)
        }
    }
}

/// Whether this CPU has AVX2 and FMA (std caches the detection).
#[cfg(target_arch = "x86_64")]
pub(crate) fn has_avx2_fma() -> bool {
    is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
}

/// Hints the cache lines of `[p, p + len)` into L1. A stream read once, front to back, needs
/// it: the hardware prefetchers stop at every 4 KiB page. Past the end of a buffer this
/// only hints at an address; prefetches never fault. A no-op off x86-64.
#[inline(always)]
pub(crate) fn prefetch(p: *const u8, len: usize) {
    #[cfg(target_arch = "x86_64")]
    prefetch_lines::<{ std::arch::x86_64::_MM_HINT_T0 }>(p, len);
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (p, len);
}

/// Like [`prefetch`], into L2 only (T1 hint).
#[inline(always)]
pub(crate) fn prefetch_l2(p: *const u8, len: usize) {
    #[cfg(target_arch = "x86_64")]
    prefetch_lines::<{ std::arch::x86_64::_MM_HINT_T1 }>(p, len);
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (p, len);
}

/// One `prefetch` instruction with `HINT` per 64-byte line of `[p, p + len)`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn prefetch_lines<const HINT: i32>(p: *const u8, len: usize) {
    let mut o = 0;
    while o < len {
        // SAFETY: prefetch is a hint and never faults, whatever the address.
        unsafe { std::arch::x86_64::_mm_prefetch::<HINT>(p.wrapping_add(o) as *const i8) };
        o += 64;
    }
}

/// Sum of the 8 lanes of `x` (candle's `hsum_float_8`, so the q8 kernel stays bit-identical).
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx2")]
pub(crate) fn hsum8(x: std::arch::x86_64::__m256) -> f32 {
    use std::arch::x86_64::*;
    let res = _mm256_extractf128_ps(x, 1);
    let res = _mm_add_ps(res, _mm256_castps256_ps128(x));
    let res = _mm_add_ps(res, _mm_movehl_ps(res, res));
    let res = _mm_add_ss(res, _mm_movehdup_ps(res));
    _mm_cvtss_f32(res)
}
