//! Allocator settings for programs that use mimalloc as their global allocator (the
//! `protonet` binary, the examples and the benchmarks do).
//!
//! Training allocates and frees the same large buffers every episode. By default
//! mimalloc returns freed memory to the OS after 10 ms and the kernel re-faults and
//! re-zeroes it on the next episode, which costs a large share of a training step.

/// Tells mimalloc to keep freed memory in the process. Call it first thing in `main`;
/// it has no effect unless mimalloc is the global allocator.
pub fn keep_freed_memory() {
    // `mi_option_arena_eager_commit` and `mi_option_purge_delay` in mimalloc v3's
    // `mimalloc.h` (libmimalloc-sys 0.1.49, pinned in Cargo.toml).
    const MI_OPTION_ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;
    const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
    // SAFETY: setting a mimalloc option takes plain integers and is done before the
    // program starts its threads.
    unsafe {
        libmimalloc_sys::mi_option_set(MI_OPTION_ARENA_EAGER_COMMIT, 1);
        libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1);
    }
}
