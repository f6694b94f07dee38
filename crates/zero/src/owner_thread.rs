//! The thread a rank's tensor ops run on. cubecl-cuda gives each thread its own stream, and the
//! NCCL collectives' fence (a device sync before each call) syncs the calling thread's stream
//! only: a tensor op of the rank queued from another thread would escape it, and NCCL could read
//! a buffer that a kernel is still writing. Debug builds check at the engine's entry points, and
//! before each collective, that they run on the thread that built the engine.

use std::thread::{self, ThreadId};

#[derive(Debug, Clone, Copy)]
pub(crate) struct OwnerThread(ThreadId);

impl OwnerThread {
    /// The calling thread.
    pub(crate) fn current() -> Self {
        Self(thread::current().id())
    }

    /// In debug builds, panics unless called on the owner thread; `entry` names the caller.
    #[track_caller]
    pub(crate) fn debug_check(&self, entry: &str) {
        debug_assert_eq!(
            thread::current().id(),
            self.0,
            "{entry} ran on another thread than the one that built the engine: a rank's tensor ops must all run on one thread \
             (the collectives' device sync covers that thread's stream only)"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_owner_thread_passes() {
        OwnerThread::current().debug_check("a step");
    }

    /// Debug builds only: release builds leave the check out.
    #[cfg(debug_assertions)]
    #[test]
    fn another_thread_trips_the_check() {
        let owner = OwnerThread::current();
        let panic = thread::spawn(move || owner.debug_check("a gather")).join().expect_err("a second thread must trip the check");
        let msg = panic.downcast_ref::<String>().expect("a formatted message");
        assert!(msg.contains("a gather ran on another thread"), "{msg}");
    }
}
