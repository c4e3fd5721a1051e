//! The module's memory allocator: power-of-two size classes with a free list each, carved from
//! 64 KiB pages that `memory.grow` adds.
//!
//! A proxy-wasm module runs on one thread and its allocations are few and small (a context, a
//! rendered header value, the buffers the host hands over), so this is all it needs: an
//! allocation or a free is a handful of instructions, and the whole allocator is a few hundred
//! bytes of wasm where a general-purpose one is several kilobytes. A block is never returned to
//! the host (wasm memory cannot shrink); a freed block is reused by the next allocation of its
//! class.
//!
//! - Classes below 64 KiB: each page serves one class, cut into equal blocks, so every block is
//!   aligned to its own size.
//! - Classes of 64 KiB and up: whole pages, straight from `memory.grow`.
//!
//! A request is rounded up to the larger of its size and its alignment (at least 16 bytes);
//! memory is at most twice what was asked for.

use core::alloc::{GlobalAlloc, Layout};
use core::arch::wasm32;
use core::cell::UnsafeCell;
use core::ptr;

const MIN_SHIFT: usize = 4;
const PAGE_SHIFT: usize = 16;
/// Classes from 16 bytes (`1 << MIN_SHIFT`) to 2 GiB.
const CLASSES: usize = 32 - MIN_SHIFT;
/// Classes carved from shared pages: 16 bytes to 32 KiB.
const SMALL: usize = PAGE_SHIFT - MIN_SHIFT;

struct Heap {
    /// Head of each class's free list (0: empty). A free block's first word holds the next.
    free: [usize; CLASSES],
    /// Per small class: the next uncut block of its current page, and the page's end.
    carve: [(usize, usize); SMALL],
}

/// The global allocator of the wasm module.
pub struct Allocator(UnsafeCell<Heap>);

// SAFETY: a proxy-wasm module runs on a single thread (wasm32 without the threads proposal), and
// no method below calls back into another while it holds the heap.
unsafe impl Sync for Allocator {}

impl Allocator {
    /// An empty heap; pages are added on the first allocation of each class.
    pub const fn new() -> Allocator {
        Allocator(UnsafeCell::new(Heap {
            free: [0; CLASSES],
            carve: [(0, 0); SMALL],
        }))
    }

    /// A block of at least `size` bytes aligned to `align`, or null when memory cannot grow.
    /// `size` may be 0 (the host asks for what it is about to copy).
    pub fn malloc(&self, size: usize, align: usize) -> *mut u8 {
        let Some(c) = class(size, align) else {
            return ptr::null_mut();
        };
        // SAFETY: single-threaded, and nothing else holds the heap (see `Sync` above).
        let heap = unsafe { &mut *self.0.get() };
        let head = heap.free[c];
        if head != 0 {
            // SAFETY: `head` is a free block of this class; its first word links the next one.
            heap.free[c] = unsafe { *(head as *const usize) };
            return head as *mut u8;
        }
        let block = 1usize << (c + MIN_SHIFT);
        let Some(carve) = heap.carve.get_mut(c) else {
            return grow(block >> PAGE_SHIFT);
        };
        if carve.0 < carve.1 {
            let p = carve.0;
            carve.0 += block;
            return p as *mut u8;
        }
        let page = grow(1);
        if !page.is_null() {
            *carve = (page as usize + block, page as usize + (1 << PAGE_SHIFT));
        }
        page
    }

    /// Return a block that [`Allocator::malloc`] gave for the same `size` and `align`.
    ///
    /// # Safety
    /// `p` came from `malloc(size, align)` on this allocator and is not used afterwards.
    pub unsafe fn free(&self, p: *mut u8, size: usize, align: usize) {
        let Some(c) = class(size, align) else { return };
        // SAFETY: as in `malloc`.
        let heap = unsafe { &mut *self.0.get() };
        // SAFETY: the block is ours again and at least 16 bytes, aligned to its size.
        unsafe { *(p as *mut usize) = heap.free[c] };
        heap.free[c] = p as usize;
    }
}

impl Default for Allocator {
    fn default() -> Allocator {
        Allocator::new()
    }
}

/// The class of a request: log2 of its rounded-up size, less `MIN_SHIFT`.
fn class(size: usize, align: usize) -> Option<usize> {
    let n = size.max(align).max(1 << MIN_SHIFT);
    let shift = (usize::BITS - (n - 1).leading_zeros()) as usize;
    Some(shift - MIN_SHIFT).filter(|&c| c < CLASSES)
}

/// `pages` new pages at the end of memory, or null.
fn grow(pages: usize) -> *mut u8 {
    match wasm32::memory_grow(0, pages) {
        usize::MAX => ptr::null_mut(),
        previous => (previous << PAGE_SHIFT) as *mut u8,
    }
}

// SAFETY: `malloc` returns blocks of at least the layout's size and alignment that no one else
// holds, and `free` takes them back by the same layout.
unsafe impl GlobalAlloc for Allocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        self.malloc(layout.size(), layout.align())
    }

    unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
        // SAFETY: the caller passes a block `alloc` gave for this layout.
        unsafe { self.free(p, layout.size(), layout.align()) }
    }

    unsafe fn realloc(&self, p: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if class(layout.size(), layout.align()) == class(new_size, layout.align()) {
            return p; // the block already holds `new_size` bytes
        }
        let q = self.malloc(new_size, layout.align());
        if !q.is_null() {
            // SAFETY: both blocks hold at least the smaller size, and they do not overlap.
            unsafe {
                ptr::copy_nonoverlapping(p, q, layout.size().min(new_size));
                self.free(p, layout.size(), layout.align());
            }
        }
        q
    }
}
