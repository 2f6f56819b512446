//! A global allocator for a broker holding many idle connections: the system allocator, with
//! the small cache-line-aligned blocks kept in pools of their own.
//!
//! Every connection holds two blocks aligned to 128 bytes: its tokio task and its I/O
//! registration (tokio pads both to a cache line pair against false sharing), 256 bytes each.
//! glibc serves an aligned request from a chunk large enough to find the alignment in (here
//! 448 bytes) and frees the ends as fragments, which later requests fill only when their sizes
//! happen to fit. Measured with 5,000 idle connections, that was some 200 bytes per connection
//! on top of what the connection asked for. Here those blocks come from 64 KiB runs carved in
//! their size (128, 256, 384 or 512 bytes): no fragments, and freed blocks are taken again by
//! the next block of the same size. Everything else goes to the system allocator unchanged.
//!
//! The pools keep what they carved: after a peak of connections, their blocks wait for the
//! next ones instead of going back to the system (glibc's fragments would not have either).
//! They are taken under a lock per size, once per connection and task, not per message.
//!
//! `pigeon` uses it (`#[global_allocator]`); a program embedding the broker may too:
//!
//! ```ignore
//! #[global_allocator]
//! static ALLOC: pigeon_server::alloc::Pooled = pigeon_server::alloc::Pooled;
//! ```

// The one module of this crate allowed `unsafe`: an allocator is unsafe by contract.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::ptr;
use std::sync::{Mutex, MutexGuard};

/// The alignment pooled: tokio's cache padding on x86_64 and aarch64. Blocks of 64-byte
/// alignment (the padding elsewhere) are pooled too, on 128-byte boundaries.
const GRAIN: usize = 128;
/// Sizes pooled: 1 to `CLASSES` grains.
const CLASSES: usize = 4;
/// What a pool takes from the system at a time.
const RUN: usize = 64 * 1024;

/// The system allocator, with blocks of 64 or 128 bytes' alignment and up to 512 bytes served
/// from pools (see the module documentation).
pub struct Pooled;

struct Pool {
    /// Blocks given back, each holding the address of the next.
    free: *mut u8,
    /// The rest of the current run, not yet handed out.
    next: *mut u8,
    end: *mut u8,
}

// The pointers are blocks owned by the pool, handed between threads under its lock.
unsafe impl Send for Pool {}

static POOLS: [Mutex<Pool>; CLASSES] = [const {
    Mutex::new(Pool {
        free: ptr::null_mut(),
        next: ptr::null_mut(),
        end: ptr::null_mut(),
    })
}; CLASSES];

/// The pool of a layout, if it is pooled.
fn class(layout: Layout) -> Option<usize> {
    let size = layout.size();
    let pooled = (64..=GRAIN).contains(&layout.align()) && size > 0 && size <= GRAIN * CLASSES;
    pooled.then(|| (size - 1) / GRAIN)
}

fn lock(class: usize) -> MutexGuard<'static, Pool> {
    // Nothing panics while holding it.
    POOLS[class].lock().unwrap_or_else(|e| e.into_inner())
}

impl Pool {
    /// A block of `block` bytes; null when the system has no memory for a new run.
    ///
    /// # Safety
    /// `block` must be the pool's block size.
    unsafe fn take(&mut self, block: usize) -> *mut u8 {
        if !self.free.is_null() {
            let p = self.free;
            // SAFETY: a freed block holds the address of the next one (see `give`).
            self.free = unsafe { p.cast::<*mut u8>().read() };
            return p;
        }
        if self.next == self.end {
            // SAFETY: RUN is a non-zero multiple of GRAIN, a power of two.
            let run = unsafe { System.alloc(Layout::from_size_align_unchecked(RUN, GRAIN)) };
            if run.is_null() {
                return run;
            }
            self.next = run;
            // SAFETY: within the run just allocated; its tail shorter than a block is unused.
            self.end = unsafe { run.add(RUN - RUN % block) };
        }
        let p = self.next;
        // SAFETY: `next` and `end` are in one run, `block` apart or more.
        self.next = unsafe { p.add(block) };
        p
    }

    /// # Safety
    /// `p` must come from `take` of this pool and no longer be used.
    unsafe fn give(&mut self, p: *mut u8) {
        // SAFETY: the block is at least GRAIN bytes and aligned for a pointer.
        unsafe { p.cast::<*mut u8>().write(self.free) };
        self.free = p;
    }
}

unsafe impl GlobalAlloc for Pooled {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        match class(layout) {
            // SAFETY: the block size is the class's.
            Some(c) => unsafe { lock(c).take((c + 1) * GRAIN) },
            // SAFETY: forwarded with the caller's guarantees.
            None => unsafe { System.alloc(layout) },
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        match class(layout) {
            Some(_) => {
                // SAFETY: forwarded with the caller's guarantees.
                let p = unsafe { self.alloc(layout) };
                if !p.is_null() {
                    // SAFETY: the block has at least `layout.size()` bytes.
                    unsafe { ptr::write_bytes(p, 0, layout.size()) };
                }
                p
            }
            // SAFETY: forwarded with the caller's guarantees.
            None => unsafe { System.alloc_zeroed(layout) },
        }
    }

    unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
        match class(layout) {
            // SAFETY: a layout of this class was allocated by this pool (`alloc`).
            Some(c) => unsafe { lock(c).give(p) },
            // SAFETY: forwarded with the caller's guarantees.
            None => unsafe { System.dealloc(p, layout) },
        }
    }

    unsafe fn realloc(&self, p: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller guarantees `new_size`, rounded up to the alignment, fits isize.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        if class(layout).is_none() && class(new_layout).is_none() {
            // SAFETY: forwarded with the caller's guarantees; neither end is pooled.
            return unsafe { System.realloc(p, layout, new_size) };
        }
        // SAFETY: a valid layout, as above.
        let q = unsafe { self.alloc(new_layout) };
        if !q.is_null() {
            // SAFETY: both blocks hold at least the smaller size and do not overlap.
            unsafe {
                ptr::copy_nonoverlapping(p, q, layout.size().min(new_size));
                self.dealloc(p, layout);
            }
        }
        q
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(size: usize, align: usize) -> Layout {
        Layout::from_size_align(size, align).unwrap()
    }

    #[test]
    fn only_small_cache_aligned_blocks_are_pooled() {
        assert_eq!(class(layout(256, 128)), Some(1));
        assert_eq!(class(layout(128, 128)), Some(0));
        assert_eq!(class(layout(129, 64)), Some(1));
        assert_eq!(class(layout(512, 128)), Some(3));
        assert_eq!(class(layout(513, 128)), None);
        assert_eq!(class(layout(256, 8)), None);
        assert_eq!(class(layout(256, 4096)), None);
    }

    #[test]
    fn blocks_are_aligned_distinct_and_taken_again_once_given_back() {
        let l = layout(256, 128);
        let blocks: Vec<*mut u8> = (0..1000)
            .map(|i| unsafe {
                let p = Pooled.alloc(l);
                assert_eq!(p as usize % 128, 0);
                ptr::write_bytes(p, i as u8, l.size());
                p
            })
            .collect();
        for (i, &p) in blocks.iter().enumerate() {
            // No block overlaps another: each still holds what was written into it.
            let bytes = unsafe { std::slice::from_raw_parts(p, l.size()) };
            assert!(bytes.iter().all(|&b| b == i as u8), "block {i} overwritten");
        }
        let last = *blocks.last().unwrap();
        for &p in &blocks {
            unsafe { Pooled.dealloc(p, l) };
        }
        // The pool hands back the block given back last.
        let again = unsafe { Pooled.alloc(l) };
        assert_eq!(again, last);
        unsafe { Pooled.dealloc(again, l) };
    }

    #[test]
    fn realloc_keeps_the_contents_between_pooled_and_system_blocks() {
        unsafe {
            let l = layout(300, 128);
            let p = Pooled.alloc_zeroed(l);
            assert!(std::slice::from_raw_parts(p, 300).iter().all(|&b| b == 0));
            ptr::write_bytes(p, 7, 300);
            let q = Pooled.realloc(p, l, 4000);
            assert_eq!(q as usize % 128, 0);
            assert!(std::slice::from_raw_parts(q, 300).iter().all(|&b| b == 7));
            let r = Pooled.realloc(q, layout(4000, 128), 100);
            assert!(std::slice::from_raw_parts(r, 100).iter().all(|&b| b == 7));
            Pooled.dealloc(r, layout(100, 128));
        }
    }

    #[test]
    fn threads_share_the_pools_without_handing_a_block_out_twice() {
        let threads: Vec<_> = (0..4u8)
            .map(|t| {
                std::thread::spawn(move || {
                    let l = layout(384, 128);
                    for _ in 0..2000 {
                        let blocks: Vec<*mut u8> = (0..16)
                            .map(|_| unsafe {
                                let p = Pooled.alloc(l);
                                ptr::write_bytes(p, t, l.size());
                                p
                            })
                            .collect();
                        for p in blocks {
                            let bytes = unsafe { std::slice::from_raw_parts(p, l.size()) };
                            assert!(bytes.iter().all(|&b| b == t), "a block was shared");
                            unsafe { Pooled.dealloc(p, l) };
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
    }
}
