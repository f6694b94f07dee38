//! Stopping on request: SIGTERM, SIGINT or SIGUSR1 on any rank. The handlers are installed first
//! thing in the process, so that a signal during start-up (config, plan, data cache, weights:
//! minutes for 7B) ends the job cleanly: no save, one message, exit code
//! [`STOPPED_DURING_STARTUP`], every rank at the same point. During training it means "finish
//! this step, save, exit 0". Ranks agree at fixed points (one all-reduce each), so that all stop
//! together.
//!
//! Under mpirun, send SIGUSR1 to mpirun: OpenMPI forwards it to every rank, while on SIGTERM or
//! SIGINT it kills the ranks within a second (`odls_base_sigkill_timeout`). The launch/ scripts
//! do that on Ctrl-C (launch/common.sh). SLURM's scancel
//! sends SIGTERM to every task directly, and waits KillWait (30 s by default) before SIGKILL.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use anyhow::{Context, Result};
use burn::tensor::backend::Backend;
use shard_comm::{Collective, ReduceOp};

/// The exit code of a job stopped by a signal before training began (sysexits' EX_TEMPFAIL:
/// nothing was done, run it again).
pub const STOPPED_DURING_STARTUP: u8 = 75;

const SIGNALS: [i32; 3] = [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT, signal_hook::consts::SIGUSR1];

/// A stop requested before training began; every rank returns it at the same point.
#[derive(Debug, thiserror::Error)]
#[error("stopped by {} during start-up ({phase}): nothing was trained or saved", signal_name(*signal))]
pub struct StoppedDuringStartup {
    pub signal: usize,
    pub phase: String,
}

fn signal_name(signal: usize) -> &'static str {
    match signal as i32 {
        signal_hook::consts::SIGTERM => "SIGTERM",
        signal_hook::consts::SIGINT => "SIGINT",
        signal_hook::consts::SIGUSR1 => "SIGUSR1",
        _ => "a signal",
    }
}

pub struct Interrupt {
    requested: Arc<AtomicBool>,
    /// The last signal received (0: none).
    signal: Arc<AtomicUsize>,
    /// `SHARD_TRAIN_TEST_INTERRUPT_AFTER=STEP`: tests ask rank 0 to stop after that step (counting
    /// from 1), as a signal would, without racing a real one.
    test_after_step: Option<u64>,
}

impl Interrupt {
    pub fn install() -> Result<Self> {
        let requested = Arc::new(AtomicBool::new(false));
        let signal = Arc::new(AtomicUsize::new(0));
        for sig in SIGNALS {
            signal_hook::flag::register(sig, Arc::clone(&requested)).context("cannot install a signal handler")?;
            signal_hook::flag::register_usize(sig, Arc::clone(&signal), sig as usize).context("cannot install a signal handler")?;
        }
        let test_after_step = std::env::var("SHARD_TRAIN_TEST_INTERRUPT_AFTER").ok().and_then(|s| s.parse().ok());
        Ok(Self { requested, signal, test_after_step })
    }

    /// Set once a stop is requested: long start-up work (the cache build) polls it.
    pub fn flag(&self) -> &AtomicBool {
        &self.requested
    }

    /// During start-up, after `phase`: whether any rank was asked to stop; every rank must call
    /// it at the same points.
    pub fn check_startup<B: Backend, C: Collective<B>>(&self, comm: &C, phase: &str) -> Result<(), StoppedDuringStartup> {
        let mut signal = [self.signal.load(Ordering::Relaxed) as f64];
        comm.all_reduce_scalars(&mut signal, ReduceOp::Max);
        match signal[0] as usize {
            0 => Ok(()),
            signal => Err(StoppedDuringStartup { signal, phase: phase.into() }),
        }
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
