//! Process-level resources: how many threads each rank computes with, and its peak memory.

use shard_core::Dtype;

use crate::config::run_config::{Device, RunConfig};

/// Splits this machine's cores between the ranks on it: rayon (burn-flex's kernels and its
/// matmul) gets cores / local ranks threads, so that N ranks on N cores do not oversubscribe them.
/// The calling thread, which trains, is the pool's first worker: burn-flex's kernels then start
/// inside the pool, instead of handing every op to a pool thread and sleeping until it is done.
pub fn share_cores_with_local_ranks(local_ranks: usize) {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let threads = (cores / local_ranks.max(1)).max(1);
    // Fails only if the pool was already built, in which case it keeps its size.
    let _ = rayon::ThreadPoolBuilder::new().num_threads(threads).use_current_thread().build_global();
}

/// mimalloc's `mi_option_purge_delay` (index 15 of `mi_option_t` in mimalloc.h, v2 and v3).
const MI_OPTION_PURGE_DELAY: std::ffi::c_int = 15;

/// How long mimalloc keeps freed memory before returning it to the OS (its `purge_delay`).
///
/// f32 (and cuda runs' host side): never returned. Training frees and re-allocates the same large
/// buffers every layer, and each return to the OS costs page faults and page zeroing on the next
/// use (14% of a step). The price is the allocator's fragmentation kept resident: on the small
/// preset at world 2, peak RSS went from about 1010 to 1110 MiB per rank while throughput went up
/// by 8-10%.
///
/// bf16 on the CPU: returned after 10 ms. burn-flex computes bf16 through f32 temporaries of many
/// sizes, and the memory kept was 20-35% of the peak RSS per rank (small preset, worlds 1, 2, 4),
/// more than the plan can predict (mimalloc's own default kept 12-17% more than planned); with
/// 10 ms bf16 runs peak within 7% of the plan (small and medium, worlds 1, 2, 4), at about 2/3
/// of the speed. On the CPU bf16 is a correctness vehicle, not the fast path.
///
/// A `MIMALLOC_PURGE_DELAY` in the environment (read by mimalloc itself) takes precedence.
pub fn set_allocator_purge(run: &RunConfig) {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
        return;
    }
    let bf16_on_cpu = run.runtime.device == Device::Cpu && run.compute_dtype() == Dtype::Bf16;
    let delay_ms = if bf16_on_cpu { 10 } else { -1 };
    unsafe extern "C" {
        fn mi_option_set(option: std::ffi::c_int, value: std::ffi::c_long);
    }
    // SAFETY: sets an option of the allocator this binary is linked with; -1 means never purge.
    unsafe { mi_option_set(MI_OPTION_PURGE_DELAY, delay_ms) };
}

/// The most resident memory this process has held (getrusage's ru_maxrss).
pub fn peak_rss_bytes() -> u64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct it is given.
    let usage = unsafe {
        libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr());
        usage.assume_init()
    };
    usage.ru_maxrss as u64 * 1024
}
