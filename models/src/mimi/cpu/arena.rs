//! Weight storage carved from shared 2 MiB-aligned chunks advised as transparent huge pages.
//!
//! A frame streams every weight once (351 MB in f32), so the page size matters: Linux backs
//! only whole, aligned 2 MiB ranges with huge pages, and Mimi's matrices are mostly 1-4 MB.
//! Allocated one by one, most of their bytes sat on 4 KiB pages (65-92 MB of 351 were huge),
//! where each page costs a TLB miss (a two-level walk in a VM) and stops the prefetchers.
//! Packed back to back into shared chunks, nearly all of them are on huge pages.

use std::ops::Deref;
use std::ptr::NonNull;
use std::sync::{Arc, Mutex, PoisonError};

use crate::lm::cpu::{HugeMap, HUGE};

/// A chunk: unmapped when the last buffer carved from it is dropped. Each buffer's bytes are
/// written only by its constructor, before anyone else can see them, then only read.
type Chunk = HugeMap;

/// Size of an ordinary chunk; a buffer over half of it gets a chunk of its own.
const CHUNK: usize = 16 * HUGE;
/// Every buffer starts on a cache line.
const LINE: usize = 64;

/// The chunk small buffers are carved from, and how many of its bytes are taken. It outlives
/// the buffers in it (at most one chunk, 32 MiB, stays mapped after every Mimi is dropped) and
/// its free tail serves the next load.
static OPEN: Mutex<Option<(Arc<Chunk>, usize)>> = Mutex::new(None);

/// Element types a buffer may hold: plain numbers for which all-zero bits are a valid zero.
pub(crate) trait Elem: Copy + Send + Sync + 'static {}
impl Elem for f32 {}
impl Elem for u16 {}

/// An immutable buffer of weights on huge-page-advised memory. Cloning shares it.
#[derive(Clone)]
pub(crate) struct HugeBuf<T: Elem> {
    _chunk: Arc<Chunk>,
    ptr: NonNull<T>,
    len: usize,
}

// SAFETY: the buffer is read-only once built, and its chunk is Send + Sync.
unsafe impl<T: Elem> Send for HugeBuf<T> {}
// SAFETY: as above.
unsafe impl<T: Elem> Sync for HugeBuf<T> {}

impl<T: Elem> HugeBuf<T> {
    /// `len` zeroed elements, then `fill` writes them; after that the buffer is read-only.
    pub(crate) fn new(len: usize, fill: impl FnOnce(&mut [T])) -> HugeBuf<T> {
        let bytes = (len * std::mem::size_of::<T>())
            .next_multiple_of(LINE)
            .max(LINE);
        let (chunk, off) = carve(bytes);
        // SAFETY: `[off, off + bytes)` lies inside the chunk, is 64-byte aligned (so aligned
        // for T) and was handed to no other buffer. A chunk is carved front to back only, so
        // these bytes are still the mapping's zeros, and T is valid as all-zero bits.
        let ptr = unsafe { NonNull::new_unchecked(chunk.as_ptr().add(off) as *mut T) };
        // SAFETY: as above; nobody else can reach these bytes until this returns.
        fill(unsafe { std::slice::from_raw_parts_mut(ptr.as_ptr(), len) });
        HugeBuf {
            _chunk: chunk,
            ptr,
            len,
        }
    }
}

/// Takes `bytes` (a multiple of [`LINE`]) from the open chunk, or from a new one.
fn carve(bytes: usize) -> (Arc<Chunk>, usize) {
    if bytes > CHUNK / 2 {
        return (Arc::new(Chunk::new(bytes)), 0);
    }
    let mut open = OPEN.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some((chunk, used)) = open.as_mut() {
        if *used + bytes <= chunk.size() {
            let off = *used;
            *used += bytes;
            return (chunk.clone(), off);
        }
    }
    let chunk = Arc::new(Chunk::new(CHUNK));
    *open = Some((chunk.clone(), bytes));
    (chunk, 0)
}

impl<T: Elem> Deref for HugeBuf<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        // SAFETY: `ptr` points at `len` initialised elements that live as long as `_chunk`.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl<T: Elem> std::fmt::Debug for HugeBuf<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HugeBuf[{}]", self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_zeroed_filled_aligned_and_disjoint() {
        let a = HugeBuf::<f32>::new(1000, |s| s.iter_mut().for_each(|v| *v = 1.5));
        let b = HugeBuf::<u16>::new(3, |s| s[1] = 7);
        let c = HugeBuf::<f32>::new(0, |_| {});
        assert!(a.iter().all(|&v| v == 1.5));
        assert_eq!(&b[..], &[0, 7, 0]);
        assert!(c.is_empty());
        for p in [
            a.as_ptr() as usize,
            b.as_ptr() as usize,
            c.as_ptr() as usize,
        ] {
            assert_eq!(p % LINE, 0);
        }
        let (a0, a1) = (a.as_ptr() as usize, a.as_ptr() as usize + 4000);
        let b0 = b.as_ptr() as usize;
        assert!(b0 >= a1 || b0 + 6 <= a0, "buffers overlap");
    }

    #[test]
    fn a_large_buffer_gets_its_own_aligned_chunk_and_outlives_its_neighbours() {
        let n = CHUNK; // CHUNK f32 = 4 x CHUNK bytes
        let big = HugeBuf::<f32>::new(n, |s| s[n - 1] = 3.0);
        assert_eq!(big.as_ptr() as usize % HUGE, 0);
        let small: Vec<_> = (0..4)
            .map(|i| HugeBuf::<f32>::new(100, |s| s[0] = i as f32))
            .collect();
        let kept = small[2].clone();
        drop(small);
        assert_eq!(kept[0], 2.0);
        assert_eq!(big[n - 1], 3.0);
        assert_eq!(big[0], 0.0);
    }
}
