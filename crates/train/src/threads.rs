//! Process-level resources: how many threads each rank computes with, and its peak memory.

/// Splits this machine's cores between the ranks on it: rayon (burn-flex's kernels and its
/// matmul) gets cores / local ranks threads, so that N ranks on N cores do not oversubscribe them.
pub fn share_cores_with_local_ranks(local_ranks: usize) {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let threads = (cores / local_ranks.max(1)).max(1);
    // Fails only if the pool was already built, in which case it keeps its size.
    let _ = rayon::ThreadPoolBuilder::new().num_threads(threads).build_global();
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
