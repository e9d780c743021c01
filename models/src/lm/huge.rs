//! Transparent huge pages for the big buffers read every step (weights, KV cache).
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
