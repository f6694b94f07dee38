//! `shard-train train --config FILE.toml`: one worker per rank (under mpirun, or a job of one
//! without it). Every rank builds its shards, then trains the configured steps; rank 0 reports
//! progress, writes metrics.jsonl and the final export.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use burn::tensor::backend::{AutodiffBackend, Backend};
use shard_checkpoint::HfCheckpoint;
use shard_comm::{Collective, MpiCollective, MpiSession, ReduceOp, World};
use shard_data::{Batch, Dataset, Example, Sampler, StepSlice, prepare_cache};
use shard_model::{LoraConfig, MistralConfig, ParamSpec, lora_params, param_count};
use shard_zero::{AdamW, Adapters, Category, Engine, LoraInit, LrSchedule, ParamSource, PeftAdapters, RandomInit, ScheduleKind, TrainSettings};

use crate::export::{ModelOrigin, export};
use crate::inspect::group_digits;
use crate::metrics::{MetricsLog, StepMetrics};
use crate::run_config::{self, RunConfig, TrainMode};

#[derive(clap::Args)]
pub struct TrainArgs {
    /// The run config (TOML).
    #[arg(long)]
    config: PathBuf,
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
        crate::threads::share_cores_with_local_ranks(world.local_size);
        crate::backend::train_on_device(&run, comm)
    });
    if let Err(e) = &result {
        if world.size > 1 {
            // The other ranks may be waiting in a collective: end them all, with this message.
            eprintln!("[rank {}/{}] error: {e:#}", world.rank, world.size);
            MpiCollective::abort_job(1);
        }
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

/// Trains with backend `B` (its inner backend holds the shards; `B` recomputes in backward).
pub fn train<B: AutodiffBackend, C: Collective<B::InnerBackend>>(run: &RunConfig, comm: C, device: B::Device) -> Result<()> {
    let world = *comm.world();
    let config_path = run.model_config_path();
    let model_config = MistralConfig::from_file(&config_path)?;
    let data = open_dataset(run, &model_config, &comm)?;
    let settings = train_settings(run);

    let checkpoint;
    let random;
    let base: &dyn ParamSource = match &run.model.path {
        Some(dir) => {
            checkpoint = HfCheckpoint::open(dir)?;
            let specs = shard_model::all_params(&model_config);
            checkpoint.check_tensors(specs.iter().map(|p| (p.name.as_str(), p.shape.as_slice())))?;
            &checkpoint
        }
        None => {
            random = RandomInit { seed: run.train.seed, std: model_config.initializer_range };
            &random
        }
    };
    let adapter_file;
    let adapter_init;
    let adapters = match lora_config(run) {
        None => None,
        Some(lora) => {
            let source: &dyn ParamSource = match &run.lora.init {
                Some(path) => {
                    adapter_file = PeftAdapters(HfCheckpoint::open_file(path)?);
                    let expected: Vec<ParamSpec> = (0..model_config.num_hidden_layers)
                        .flat_map(|i| lora_params(&model_config, i, lora.r, lora.targeted()))
                        .collect();
                    adapter_file.check(&expected).context("lora.init")?;
                    &adapter_file
                }
                None => {
                    adapter_init = LoraInit { seed: run.train.seed };
                    &adapter_init
                }
            };
            Some(Adapters { config: lora, source })
        }
    };
    let mut engine = Engine::<B, C>::new(model_config.clone(), base, adapters, comm, device, settings)?;

    let log = if world.is_main() {
        announce(run, &world, &model_config, data.len(), engine.memory().current(Category::ModelStates));
        Some(MetricsLog::create(&run.output.dir, run.train.steps)?)
    } else {
        None
    };
    let failure = crate::fault_injection::from_env();
    let mut sampler = Sampler::new(data.len(), run.data.shuffle, run.data.seed);
    let pad_id = model_config.eos_token_id.unwrap_or(0);
    for step in 0..run.train.steps {
        failure.check(world.rank, step)?;
        let slice = StepSlice {
            step,
            micro_batch_size: run.train.micro_batch_size,
            grad_accum: run.train.grad_accum,
            rank: world.rank,
            world_size: world.size,
        };
        let micro_batches: Vec<Batch> = (0..run.train.grad_accum)
            .map(|k| {
                let examples: Vec<Example> = slice.micro_batch_positions(k).map(|p| data.get(sampler.example_at(p))).collect();
                Batch::from_examples(&examples.iter().collect::<Vec<_>>(), pad_id)
            })
            .collect();
        let started = Instant::now();
        let report = engine.step(&micro_batches)?;
        let mut peak = [report.peak_bytes as f64];
        engine.comm().all_reduce_scalars(&mut peak, ReduceOp::Max);
        let seconds = started.elapsed().as_secs_f64();
        if let Some(log) = &log {
            let state_bytes = engine.memory().current(Category::ModelStates);
            log.record(&StepMetrics::new(step + 1, &report, seconds, peak[0] as u64, state_bytes))?;
        }
    }
    // Every rank's peak resident memory, gathered on rank 0 (slot r holds rank r's).
    let mut peak_rss = vec![0.0; world.size];
    peak_rss[world.rank] = crate::threads::peak_rss_bytes() as f64;
    engine.comm().all_reduce_scalars(&mut peak_rss, ReduceOp::Sum);
    if let Some(log) = log {
        log.finish(&run.output.dir, world.size, peak_rss.iter().map(|&b| b as u64).collect())?;
    }

    let origin = ModelOrigin { config_json: &config_path, dir: run.model.path.as_deref() };
    if let Some(dir) = export(&mut engine, run.output.export, &run.output.dir, &origin)? {
        if world.is_main() {
            println!("exported {}", dir.display());
        }
    }
    Ok(())
}

/// The tokenized dataset: rank 0 builds the cache (or finds it up to date) while the other
/// ranks wait, then every rank maps it. The cache lives under output.dir, which all ranks must
/// see (a shared file system when the job spans nodes).
fn open_dataset<B: Backend, C: Collective<B>>(run: &RunConfig, model: &MistralConfig, comm: &C) -> Result<Dataset> {
    let spec = run.data_spec(model);
    let dir = run.data_cache_dir();
    if comm.world().is_main() {
        let prepared = prepare_cache(&spec, &dir)?;
        println!("data: {} ({})", prepared.stats, if prepared.built { "tokenized now" } else { "cached" });
    }
    comm.barrier();
    Ok(Dataset::open(&spec, &dir)?)
}

/// The adapters to train in LoRA mode.
fn lora_config(run: &RunConfig) -> Option<LoraConfig> {
    (run.train.mode == TrainMode::Lora).then(|| LoraConfig {
        r: run.lora.r,
        alpha: run.lora.alpha,
        dropout: run.lora.dropout,
        targets: run.lora.targets.clone(),
    })
}

fn train_settings(run: &RunConfig) -> TrainSettings {
    let t = &run.train;
    TrainSettings {
        optimizer: AdamW { betas: t.betas, eps: t.eps, weight_decay: t.weight_decay },
        schedule: LrSchedule {
            kind: match t.lr_schedule {
                run_config::LrSchedule::Constant => ScheduleKind::Constant,
                run_config::LrSchedule::Linear => ScheduleKind::Linear,
                run_config::LrSchedule::Cosine => ScheduleKind::Cosine,
            },
            lr: t.lr,
            warmup_steps: t.warmup_steps,
            total_steps: t.steps,
        },
        max_grad_norm: t.max_grad_norm,
        seed: t.seed,
    }
}

fn announce(run: &RunConfig, world: &World, cfg: &MistralConfig, examples: usize, state_bytes: u64) {
    let t = &run.train;
    let per_step = t.micro_batch_size * t.grad_accum * world.size;
    println!(
        "shard-train: {} parameters, {} rank(s) on {} node(s); model states {:.1} MiB per rank",
        group_digits(param_count(cfg)),
        world.size,
        world.nodes,
        state_bytes as f64 / (1 << 20) as f64,
    );
    println!(
        "{} steps of {per_step} examples ({} per micro-batch x {} accumulation x {} ranks) from {} examples",
        t.steps, t.micro_batch_size, t.grad_accum, world.size, examples
    );
}
