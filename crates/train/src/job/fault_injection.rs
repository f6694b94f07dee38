//! A failure on purpose, for the tests that check that one failing rank ends the whole job:
//! `SHARD_TRAIN_TEST_FAIL=RANK:STEP` makes that rank fail with an error before that step
//! (counting from 0), `RANK:STEP:panic` with a panic. Unset, it does nothing.
//! `SHARD_TRAIN_TEST_STOP_BEFORE_MPI_INIT=RANK` stops that rank (SIGSTOP) just before MPI_Init.

use anyhow::{Result, bail};

pub struct FaultInjection(Option<(usize, u64, bool)>);

pub fn from_env() -> FaultInjection {
    let spec = std::env::var("SHARD_TRAIN_TEST_FAIL").ok();
    FaultInjection(spec.and_then(|s| {
        let mut parts = s.split(':');
        let rank = parts.next()?.parse().ok()?;
        let step = parts.next()?.parse().ok()?;
        Some((rank, step, parts.next() == Some("panic")))
    }))
}

impl FaultInjection {
    pub fn check(&self, rank: usize, step: u64) -> Result<()> {
        match self.0 {
            Some((r, s, panic)) if r == rank && s == step => {
                if panic {
                    panic!("injected panic on rank {rank} before step {step} (SHARD_TRAIN_TEST_FAIL)");
                }
                bail!("injected failure on rank {rank} before step {step} (SHARD_TRAIN_TEST_FAIL)")
            }
            _ => Ok(()),
        }
    }
}

/// `SHARD_TRAIN_TEST_STOP_BEFORE_MPI_INIT=RANK`: that rank stops itself (SIGSTOP, as an operator's
/// `kill -STOP` or a machine that hangs would) just before MPI_Init, where the other ranks wait
/// for it. The rank is the launcher's (`OMPI_COMM_WORLD_RANK`): MPI does not know it yet.
pub fn stop_before_mpi_init() {
    let Ok(stopped) = std::env::var("SHARD_TRAIN_TEST_STOP_BEFORE_MPI_INIT") else { return };
    if std::env::var("OMPI_COMM_WORLD_RANK").is_ok_and(|rank| rank == stopped) {
        // SAFETY: raise has no preconditions; the process resumes only on SIGCONT.
        unsafe { libc::raise(libc::SIGSTOP) };
    }
}
