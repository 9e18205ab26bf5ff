//! The process's allocator, tuned for training.
//!
//! Every op allocates its output afresh, and a DenseNet's tensors are tens of megabytes. glibc
//! serves each such allocation with its own `mmap` and hands it back to the kernel when it is
//! freed, so the next one starts as untouched pages: the kernel zeroes every page on first
//! write, and unmapping interrupts the other cores to flush their TLBs. On a DenseNet-121
//! training step that is about a sixth of the time (measured with `perf`: `clear_page_erms`,
//! page faults, `smp_call_function_many_cond`). Keeping freed memory in the heap for reuse
//! removes it at no cost in peak memory: the peak is what is alive at once either way.

/// Tells glibc to serve allocations up to 1 GiB from its heap and to keep freed memory for
/// reuse instead of returning it to the kernel, all threads from one heap: the ops run on
/// rayon's workers ([`crate::ops::on_workers`]), and a heap per thread kept each one's freed
/// tensors from the others (the book's net at 32×32, batch 256: 577 MiB peak against 299 with
/// one heap, at the same speed). Call it once, first thing in `main`; the `densenet-zoo`
/// binary does. Does nothing on other platforms and allocators.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes glibc's allocation thresholds; it is called before any
    // other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
        libc::mallopt(libc::M_TOP_PAD, 256 << 20);
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}
