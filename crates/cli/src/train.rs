//! `shard-train train --config FILE.toml [--resume latest|DIR]`: one worker per rank (under
//! mpirun, or a job of one without it), each running `shard_train_core::run::train` over MPI.

use std::path::PathBuf;

use anyhow::Result;
use burn::backend::Flex;
use shard_train_core::config::plan::check_before_training;
use shard_train_core::config::run_config::{Override, RunConfig, parse_override};
use shard_train_core::job::job_end::{StartedJob, agree, agree_on_rank_0, end_job, start_job, with_watchdog};
use shard_train_core::metrics::progress::ProgressMode;
use shard_train_core::run::train::RunOptions;
use shard_train_core::saves::output_dir::{claim, other_runs_files};
use shard_train_core::system::threads::{set_allocator_purge, share_cores_with_local_ranks};

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
    /// Override a key of the run config, typed and checked like the file (repeatable), e.g.
    /// `--set train.lr=1e-4 --set data.seq_len=2048`; run.toml records the result.
    #[arg(long = "set", value_name = "KEY=VALUE", value_parser = parse_override)]
    overrides: Vec<Override>,
    /// How rank 0 shows the steps: a bar, a line per step, or `auto`: a bar when its stderr is a
    /// terminal, or the launch script's is (launch/*.sh set SHARD_TRAIN_TERMINAL=1 then).
    #[arg(long, value_name = "auto|bar|lines", default_value = "auto")]
    progress: ProgressMode,
}

/// Installs the signal handlers and the start-up deadline, initialises MPI, then trains under the
/// watchdog. An error met by every rank is reported once (by rank 0) and ends the job normally;
/// any other error or a panic on any rank ends the whole job with MPI_Abort. Never returns an
/// error on a rank but 0.
pub fn run(args: TrainArgs) -> Result<()> {
    let StartedJob { interrupt, deadline, session, comm } = start_job(&args.config)?;
    let world = *comm.world();
    let loaded = RunConfig::load(&args.config, &args.overrides).map_err(anyhow::Error::from);
    let result = agree::<_, Flex, _>(&comm, loaded).and_then(|run| {
        // Every refusal a user can fix comes before the plan, so that it is not lost under it.
        let resume = args.resume.is_some();
        agree_on_rank_0::<_, Flex, _>(&comm, world.is_main().then(|| other_runs_files(&run, resume, args.overwrite)).transpose())?;
        let checked = check_before_training(&run, &world, args.force).and_then(|()| {
            shard_train_core::system::cuda_check::check_node(&run, &world)?;
            #[cfg(feature = "cuda")]
            if run.runtime.device == shard_train_core::config::run_config::Device::Cuda {
                let gpu = shard_train_core::system::cuda_check::gpu_of_this_rank(&world)?;
                let free = shard_train_core::metrics::device_memory::cuda_free_bytes(gpu)?;
                shard_train_core::config::plan::check_free_device_memory(&run, &world, &format!("GPU {gpu}"), free, args.force)?;
            }
            Ok(())
        });
        agree::<_, Flex, _>(&comm, checked)?;
        // Rank 0 holds output.dir for the run (its lock file goes when `lock` is dropped).
        let lock = agree_on_rank_0::<_, Flex, _>(&comm, world.is_main().then(|| claim(&run, resume, args.overwrite)).transpose())?;
        share_cores_with_local_ranks(world.local_size);
        set_allocator_purge(&run);
        let comm = with_watchdog(comm, world, &run, deadline);
        let options = RunOptions {
            resume: args.resume,
            allow_schedule_change: args.allow_schedule_change,
            interrupt,
            phase: Some(comm.phase()),
            progress: args.progress,
        };
        let trained = crate::backend::train_on_device(&run, &options, comm);
        drop(lock);
        trained
    });
    end_job(result, &world, session)
}
