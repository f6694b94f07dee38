//! Who this process is among the ranks of a job.

/// A rank's place in the job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct World {
    pub rank: usize,
    pub size: usize,
    /// Rank among the processes on this node (it picks the GPU).
    pub local_rank: usize,
    pub local_size: usize,
    pub nodes: usize,
}

impl World {
    /// A job of one process.
    pub fn single() -> Self {
        Self { rank: 0, size: 1, local_rank: 0, local_size: 1, nodes: 1 }
    }

    pub fn is_main(&self) -> bool {
        self.rank == 0
    }
}
