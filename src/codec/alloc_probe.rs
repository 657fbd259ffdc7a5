//! The global allocator of the library's unit tests: the system allocator, which also notes the
//! largest single allocation a thread asks for while it measures one. Decoders must refuse a
//! hostile length before they allocate for it, and only the allocator sees the difference: on a
//! machine with enough address space, a doomed allocation of gigabytes succeeds unnoticed (pages
//! are not touched), and on one without, it aborts the process.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

struct Probe;

thread_local! {
    /// The largest allocation of this thread so far, while it measures (`None` otherwise).
    /// `const`: the allocator itself must not allocate to reach it.
    static LARGEST: Cell<Option<usize>> = const { Cell::new(None) };
}

fn note(size: usize) {
    // `try_with`: the thread's locals are gone while it exits, and it still frees memory then.
    let _ = LARGEST.try_with(|largest| {
        if let Some(seen) = largest.get() {
            largest.set(Some(seen.max(size)));
        }
    });
}

// SAFETY: every call is passed on unchanged to the system allocator.
unsafe impl GlobalAlloc for Probe {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        System.alloc(layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        System.alloc_zeroed(layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        System.realloc(ptr, layout, new_size)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static PROBE: Probe = Probe;

/// Runs `f`, returning what it returns and the size of the largest single allocation (or
/// reallocation) it asked for, 0 if none.
pub(crate) fn largest_allocation<R>(f: impl FnOnce() -> R) -> (R, usize) {
    let outer = LARGEST.with(|l| l.replace(Some(0)));
    let result = f();
    let largest = LARGEST.with(|l| l.replace(outer)).unwrap_or(0);
    // A measurement inside another one counts in the outer one too.
    if let Some(o) = outer {
        LARGEST.with(|l| l.set(Some(o.max(largest))));
    }
    (result, largest)
}
