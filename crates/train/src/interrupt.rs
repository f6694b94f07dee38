//! Stopping on request: SIGTERM, SIGINT or SIGUSR1 on any rank means "finish this step, save,
//! exit 0". Ranks agree after every step (one all-reduce), so that all stop at the same step.
//!
//! Under mpirun, send SIGUSR1 to mpirun: OpenMPI forwards it to every rank, while on SIGTERM or
//! SIGINT it kills the ranks within a second (`odls_base_sigkill_timeout`). SLURM's scancel
//! sends SIGTERM to every task directly, and waits KillWait (30 s by default) before SIGKILL.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result};
use burn::tensor::backend::Backend;
use shard_comm::{Collective, ReduceOp};

pub struct Interrupt {
    requested: Arc<AtomicBool>,
    /// `SHARD_TRAIN_TEST_INTERRUPT_AFTER=STEP`: tests ask rank 0 to stop after that step (counting
    /// from 1), as a signal would, without racing a real one.
    test_after_step: Option<u64>,
}

impl Interrupt {
    pub fn install() -> Result<Self> {
        let requested = Arc::new(AtomicBool::new(false));
        for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT, signal_hook::consts::SIGUSR1] {
            signal_hook::flag::register(signal, Arc::clone(&requested)).context("cannot install a signal handler")?;
        }
        let test_after_step = std::env::var("SHARD_TRAIN_TEST_INTERRUPT_AFTER").ok().and_then(|s| s.parse().ok());
        Ok(Self { requested, test_after_step })
    }

    /// Whether any rank was asked to stop by the end of step `step` (counting from 1); every
    /// rank must call this after every step.
    pub fn agreed<B: Backend, C: Collective<B>>(&self, comm: &C, step: u64) -> bool {
        let here = self.requested.load(Ordering::Relaxed) || (comm.world().is_main() && self.test_after_step == Some(step));
        let mut any = [f64::from(u8::from(here))];
        comm.all_reduce_scalars(&mut any, ReduceOp::Max);
        any[0] > 0.0
    }
}
