//! How a failing run ends its job. An error that every rank meets at the same point (a bad run
//! config, a damaged save, a non-finite step, a stop during start-up) is reported once, by rank
//! 0, and the ranks end together; any other error ends the job at once with MPI_Abort from the
//! rank that found it (the others may be waiting for it in a collective), and so does a rank
//! that waits in a collective past its deadline (the watchdog) or panics.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use burn::tensor::backend::Backend;
use shard_comm::{Collective, MpiCollective, MpiSession, ReduceOp, WatchdogSettings, Watched, World};

use crate::config::run_config::RunConfig;
use crate::job::error_text::user_message;
use crate::job::fault_injection;
use crate::job::interrupt::{Interrupt, STOPPED_DURING_STARTUP, StoppedDuringStartup};
use crate::job::startup_deadline::{DEADLINE_EXIT_CODE, StartupDeadline};

/// An error every rank returns at the same point of the run.
#[derive(Debug, thiserror::Error)]
#[error("{0:#}")]
pub struct OnEveryRank(pub anyhow::Error);

/// `result` of a point that every rank reaches: when every rank failed, their errors become
/// [`OnEveryRank`] (one all-reduce, which every rank must make).
pub fn agree<T, B: Backend, C: Collective<B>>(comm: &C, result: Result<T>) -> Result<T> {
    let mut failed = [f64::from(u8::from(result.is_err()))];
    comm.all_reduce_scalars(&mut failed, ReduceOp::Sum);
    match result {
        Err(e) if failed[0] as usize == comm.world().size && !e.is::<OnEveryRank>() => Err(OnEveryRank(e).into()),
        other => other,
    }
}

/// `result` of a point where only rank 0 can fail (its claim on output.dir): when it fails, every
/// rank returns [`OnEveryRank`], rank 0 with its error (which only rank 0 prints). One
/// all-reduce, which every rank must make.
pub fn agree_on_rank_0<T, B: Backend, C: Collective<B>>(comm: &C, result: Result<T>) -> Result<T> {
    let mut failed = [f64::from(u8::from(comm.world().is_main() && result.is_err()))];
    comm.all_reduce_scalars(&mut failed, ReduceOp::Max);
    match result {
        Err(e) => Err(OnEveryRank(e).into()),
        Ok(_) if failed[0] > 0.0 => Err(OnEveryRank(anyhow::anyhow!("rank 0 stopped the job")).into()),
        ok => ok,
    }
}

/// Whether every rank returned `e` at the same point (see [`OnEveryRank`]).
pub fn on_every_rank(e: &anyhow::Error) -> bool {
    e.is::<OnEveryRank>() || e.is::<StoppedDuringStartup>()
}

/// What a rank has once its part of the job started.
pub struct StartedJob {
    pub interrupt: Interrupt,
    /// Until [`with_watchdog`] takes over.
    pub deadline: StartupDeadline,
    pub session: MpiSession,
    pub comm: MpiCollective,
}

/// Starts this rank's part of a job of `config`: the signal handlers first thing (a signal
/// during start-up, minutes for 7B, must end the job cleanly), the start-up deadline (before
/// MPI_Init, which waits for every rank), then MPI, then on a job of several ranks a panic hook
/// that ends them all.
pub fn start_job(config: &Path) -> Result<StartedJob> {
    let interrupt = Interrupt::install()?;
    let deadline = StartupDeadline::start(config);
    fault_injection::stop_before_mpi_init();
    let session = MpiSession::init().context("MPI could not be initialised")?;
    deadline.mpi_ready();
    let comm = session.collective();
    if comm.world().size > 1 {
        abort_job_on_panic();
    }
    Ok(StartedJob { interrupt, deadline, session, comm })
}

/// Ends this rank's part of the job with the run's `result`: an error met by every rank is
/// printed once (by rank 0) and every rank exits with its code after finalizing MPI; any other
/// error on a job of several ranks ends them all with MPI_Abort. Returns only on success (or
/// the error of a job of one).
pub fn end_job(result: Result<()>, world: &World, session: MpiSession) -> Result<()> {
    match result {
        Err(e) if on_every_rank(&e) => {
            let stop = e.downcast_ref::<StoppedDuringStartup>();
            if world.is_main() {
                match stop {
                    Some(stop) => eprintln!("{stop}"),
                    None => eprintln!("error: {}", user_message(&e)),
                }
            }
            let code = if stop.is_some() { STOPPED_DURING_STARTUP } else { 1 };
            // Every rank is here: MPI finalizes normally, which waits for rank 0's message
            // (a rank that exited first would have mpirun kill rank 0 before it prints).
            drop(session);
            std::process::exit(code.into())
        }
        Err(e) if world.size > 1 => {
            // The other ranks may be waiting in a collective: end them all, with this message,
            // written in one piece so that another rank's cannot cut into it.
            let line = format!("[rank {}/{}] error: {}\n", world.rank, world.size, user_message(&e));
            let _ = std::io::stderr().lock().write_all(line.as_bytes()); // nothing to do if stderr is gone
            MpiCollective::abort_job(1)
        }
        result => {
            drop(session); // finalizes MPI on every rank, after the engine and its collective are gone
            result
        }
    }
}

/// The collective with a deadline on every call (`runtime.timeout_s`; its own for start-up),
/// the ranks' progress published under `<output.dir>/progress/`; it takes over from `deadline`.
pub fn with_watchdog(comm: MpiCollective, world: World, run: &RunConfig, deadline: StartupDeadline) -> Watched<MpiCollective> {
    let settings = WatchdogSettings {
        timeout: Duration::from_secs(run.runtime.timeout_s),
        startup_timeout: Duration::from_secs(run.runtime.startup_timeout_s),
        progress_dir: Some(run.output.dir.join("progress")),
        abort: MpiCollective::abort_job,
        exit_code: DEADLINE_EXIT_CODE,
    };
    let watched = Watched::new(comm, world, settings);
    deadline.hand_over();
    watched
}

/// After the default report of a panic, MPI_Abort ends every rank (about 0.3 s), so that no
/// rank waits forever in a collective for one that is gone.
fn abort_job_on_panic() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report(info);
        MpiCollective::abort_job(101);
    }));
}
