//! The allocator: mimalloc, told to keep what it frees.

// Training allocates and frees the same large buffers every layer; glibc maps and unmaps each
// one, so every reuse page-faults again. mimalloc keeps them for reuse.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `mi_option_purge_delay` (index 15 of `mi_option_t` in mimalloc.h, v2 and v3).
const MI_OPTION_PURGE_DELAY: std::ffi::c_int = 15;

/// Keeps freed memory for reuse instead of returning it to the OS after 10 ms (mimalloc's
/// default): training frees and re-allocates the same large buffers every layer, and each
/// return to the OS costs page faults and page zeroing on the next use (14% of a step). The
/// price is the allocator's fragmentation kept resident: on the small preset at world 2, peak
/// RSS went from about 1010 to 1110 MiB per rank while throughput went up by 8-10%.
/// A `MIMALLOC_PURGE_DELAY` in the environment (read by mimalloc itself) takes precedence.
pub fn keep_freed_memory() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
        return;
    }
    unsafe extern "C" {
        fn mi_option_set(option: std::ffi::c_int, value: std::ffi::c_long);
    }
    // SAFETY: sets an option of the allocator this binary is linked with; -1 means never purge.
    unsafe { mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
}
