//! `shard-train train --config FILE.toml [--resume latest|DIR]`: one worker per rank (under
//! mpirun, or a job of one without it), each running `shard_train_core::train` over MPI.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use burn::backend::Flex;
use shard_comm::{MpiCollective, MpiSession, WatchdogSettings, Watched, World};
use shard_train_core::interrupt::{Interrupt, STOPPED_DURING_STARTUP, StoppedDuringStartup};
use shard_train_core::job_end::{agree, on_every_rank};
use shard_train_core::output_dir::claim;
use shard_train_core::plan::check_before_training;
use shard_train_core::run_config::RunConfig;
use shard_train_core::threads::share_cores_with_local_ranks;
use shard_train_core::train::RunOptions;

#[derive(clap::Args)]
pub struct TrainArgs {
    /// The run config (TOML).
    #[arg(long)]
    config: PathBuf,
    /// Continue from a save: `latest` (under output.dir/checkpoints) or a checkpoint directory.
    #[arg(long, value_name = "latest|DIR")]
    resume: Option<PathBuf>,
    /// Train even if the plan says the run does not fit in memory.
    #[arg(long)]
    force: bool,
    /// Start a new run in an output.dir that holds another run's saves or metrics, deleting them.
    #[arg(long)]
    overwrite: bool,
    /// Resume with another learning-rate schedule (train.lr, lr_schedule, warmup_steps, steps).
    #[arg(long)]
    allow_schedule_change: bool,
}

/// Installs the signal handlers, initialises MPI, then trains under the watchdog. An error met
/// by every rank is reported once (by rank 0) and ends the job normally; any other error or a
/// panic on any rank ends the whole job with MPI_Abort. Never returns an error on a rank but 0.
pub fn run(args: TrainArgs) -> Result<()> {
    // First thing: a signal during start-up (minutes for 7B) must end the job cleanly.
    let interrupt = Interrupt::install()?;
    let session = MpiSession::init().context("MPI could not be initialised")?;
    let comm = session.collective();
    let world = *comm.world();
    if world.size > 1 {
        abort_job_on_panic();
    }
    let prepared = RunConfig::load(&args.config).map_err(anyhow::Error::from).and_then(|run| {
        check_before_training(&run, &world, args.force)?;
        // Rank 0 holds output.dir for the run (its lock file goes when `lock` is dropped).
        let lock = world.is_main().then(|| claim(&run, args.resume.is_some(), args.overwrite)).transpose()?;
        Ok((run, lock))
    });
    let result = agree::<_, Flex, _>(&comm, prepared).and_then(|(run, lock)| {
        share_cores_with_local_ranks(world.local_size);
        let comm = watched(comm, world, &run);
        let options = RunOptions { resume: args.resume, allow_schedule_change: args.allow_schedule_change, interrupt, phase: Some(comm.phase()) };
        let trained = crate::backend::train_on_device(&run, &options, comm);
        drop(lock);
        trained
    });
    match result {
        Err(e) if on_every_rank(&e) => {
            drop(session); // every rank is here: MPI finalizes normally
            let code = match e.downcast_ref::<StoppedDuringStartup>() {
                Some(stop) => {
                    if world.is_main() {
                        eprintln!("{stop}");
                    }
                    STOPPED_DURING_STARTUP
                }
                None => {
                    if world.is_main() {
                        eprintln!("error: {e:#}");
                    }
                    1
                }
            };
            std::process::exit(code.into())
        }
        Err(e) if world.size > 1 => {
            // The other ranks may be waiting in a collective: end them all, with this message.
            eprintln!("[rank {}/{}] error: {e:#}", world.rank, world.size);
            MpiCollective::abort_job(1)
        }
        result => {
            drop(session); // finalizes MPI on every rank, after the engine and its collective are gone
            result
        }
    }
}

/// The collective with a deadline on every call (`runtime.timeout_s`; its own for start-up),
/// the ranks' progress published under `<output.dir>/progress/`.
fn watched(comm: MpiCollective, world: World, run: &RunConfig) -> Watched<MpiCollective> {
    let settings = WatchdogSettings {
        timeout: Duration::from_secs(run.runtime.timeout_s),
        startup_timeout: Duration::from_secs(run.runtime.startup_timeout_s),
        progress_dir: Some(run.output.dir.join("progress")),
        abort: MpiCollective::abort_job,
        exit_code: WATCHDOG_EXIT_CODE,
    };
    Watched::new(comm, world, settings)
}

/// The exit code of a job that the watchdog ended (as coreutils' `timeout`).
const WATCHDOG_EXIT_CODE: i32 = 124;

/// After the default report of a panic, MPI_Abort ends every rank (about 0.3 s), so that no
/// rank waits forever in a collective for one that is gone.
fn abort_job_on_panic() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report(info);
        MpiCollective::abort_job(101);
    }));
}
