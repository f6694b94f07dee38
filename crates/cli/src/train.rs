//! `shard-train train --config FILE.toml [--resume latest|DIR]`: one worker per rank (under
//! mpirun, or a job of one without it), each running `shard_train_core::train` over MPI.

use std::path::PathBuf;

use anyhow::{Context, Result};
use shard_comm::{MpiCollective, MpiSession};
use shard_train_core::plan::check_before_training;
use shard_train_core::run_config::RunConfig;
use shard_train_core::threads::share_cores_with_local_ranks;

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
}

/// Initialises MPI, then trains; an error or panic on any rank ends the whole job.
pub fn run(args: TrainArgs) -> Result<()> {
    let session = MpiSession::init().context("MPI could not be initialised")?;
    let comm = session.collective();
    let world = *comm.world();
    if world.size > 1 {
        abort_job_on_panic();
    }
    let result = RunConfig::load(&args.config).map_err(anyhow::Error::from).and_then(|run| {
        check_before_training(&run, &world, args.force)?;
        share_cores_with_local_ranks(world.local_size);
        crate::backend::train_on_device(&run, args.resume.as_deref(), comm)
    });
    if let Err(e) = &result
        && world.size > 1
    {
        // The other ranks may be waiting in a collective: end them all, with this message.
        eprintln!("[rank {}/{}] error: {e:#}", world.rank, world.size);
        MpiCollective::abort_job(1);
    }
    drop(session); // finalizes MPI on every rank, after the engine and its collective are gone
    result
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
