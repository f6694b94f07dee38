//! The run: one rank's part of a training run, from its run config to the export at the end.
//! Every rank builds its shards, then trains the configured steps, saving every
//! `output.save_every` steps, at the end and when asked to stop; rank 0 reports progress, writes
//! metrics.jsonl and the final export.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::tensor::backend::{AutodiffBackend, Backend};
use shard_checkpoint::{DEFAULT_MAX_SHARD_BYTES, HfCheckpoint, ScheduleState};
use shard_comm::{Collective, Phase, ReduceOp, World};
use shard_data::{Batch, DataError, Dataset, Example, Sampler, StepSlice, prepare_cache};
use shard_model::{LoraConfig, MistralConfig, param_count};
use shard_plan::group_digits;
use shard_zero::{AdamW, Category, EngineError, Float, LrSchedule, Precision, ScheduleKind, StepReport, TrainSettings};

use crate::engine_setup::build_engine;
use crate::export::{ExportTarget, export_at_end, model_dtype};
use crate::interrupt::Interrupt;
use crate::metrics::{MetricsLog, StepMetrics};
use crate::job_end::{OnEveryRank, agree};
use crate::run_config::{self, ComputeDtype, ExportFormat, OnNonFinite, RunConfig, TrainMode};
use crate::save::{ResumeChecks, RunPosition, save};

/// What the command line adds to the run config, and the run's handles on the process.
pub struct RunOptions {
    /// `--resume latest|DIR`.
    pub resume: Option<PathBuf>,
    /// `--allow-schedule-change`: resume with other `lr`, `lr_schedule`, `warmup_steps`, `steps`.
    pub allow_schedule_change: bool,
    /// Installed first thing in the process.
    pub interrupt: Interrupt,
    /// The watchdog's view of what the run does, if a watchdog guards the collective.
    pub phase: Option<Phase>,
}

impl RunOptions {
    fn set_phase(&self, phase: &str, training: bool) {
        if let Some(p) = &self.phase {
            p.set(phase, training);
        }
    }
}

/// Trains with backend `B` (its inner backend holds the shards; `B` recomputes in backward).
pub fn train<B: AutodiffBackend, C: Collective<B::InnerBackend>>(run: &RunConfig, options: &RunOptions, comm: C, device: B::Device) -> Result<()> {
    let world = *comm.world();
    let interrupt = &options.interrupt;
    interrupt.check_startup(&comm, "config and plan")?;
    let config_path = run.model_config_path();
    // Kept as read too: saves and exports write the model's config.json back unchanged.
    let text = std::fs::read_to_string(&config_path).with_context(|| format!("cannot read {}", config_path.display()))?;
    let model_config_json: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{}: not valid JSON", config_path.display()))?;
    let model_config = MistralConfig::from_json(&model_config_json, &config_path)?;
    if shard_checkpoint::is_quantized(&model_config_json) && run.train.mode != TrainMode::Qlora {
        bail!(
            "{}: `quantization_config`: model.path is a quantized (bitsandbytes NF4) checkpoint; train.mode = \"full\" and \"lora\" need the float checkpoint it was made from (an NF4 base trains with train.mode = \"qlora\")",
            config_path.display()
        );
    }
    let lora = lora_config(run);
    let t = &run.train;
    let examples_per_step = (t.micro_batch_size * t.grad_accum * world.size) as u64;
    let model_fingerprint = run.model.path.as_deref().map(HfCheckpoint::open).transpose()?.map(|c| c.fingerprint());
    let schedule = schedule_state(run);
    let checks = ResumeChecks {
        model: &model_config,
        lora: lora.as_ref(),
        examples_per_step,
        model_fingerprint: model_fingerprint.as_deref(),
        schedule: &schedule,
        allow_schedule_change: options.allow_schedule_change,
    };
    options.set_phase("start-up: opening the save to resume from", false);
    let saved = options.resume.as_deref().map(|spec| agree(&comm, crate::save::open_resume(run, spec, &checks, &comm))).transpose()?;
    options.set_phase("start-up: the data cache", false);
    let data = open_dataset(run, &model_config, &comm, interrupt)?;
    if world.is_main() && examples_per_step as usize > data.len() {
        eprintln!(
            "warning: a step takes {examples_per_step} examples (micro_batch_size x grad_accum x ranks) but {} holds {}: examples repeat within a step",
            run.data.path.display(),
            data.len()
        );
    }
    let mut sampler = Sampler::new(data.len(), run.data.shuffle, run.data.seed);
    if let Some(saved) = &saved {
        let data_step = sampler.resume_step(saved.state().sampler, examples_per_step)?;
        anyhow::ensure!(data_step == saved.state().step, "the saved data position is step {data_step}, the optimizer's step {}", saved.state().step);
    }
    options.set_phase("start-up: the weights", false);
    let mut engine = build_engine::<B, C>(run, &model_config, lora, saved.as_ref(), train_settings(run), comm, device)?;
    drop(saved);
    interrupt.check_startup(engine.comm(), "loading the weights")?;
    let first_step = engine.steps_done();

    let log = if world.is_main() {
        announce(run, &world, &model_config, data.len(), engine.memory().current(Category::ModelStates));
        if first_step > 0 {
            println!("resumed after step {first_step}");
        }
        Some(MetricsLog::open(&run.output.dir, run.train.steps, first_step)?)
    } else {
        None
    };
    let failure = crate::fault_injection::from_env();
    let pad_id = model_config.eos_token_id.unwrap_or(0);
    let mut interrupted = false;
    let mut skips = NonFiniteSkips::new(run);
    for step in first_step..t.steps {
        options.set_phase(&format!("step {}", step + 1), true);
        failure.check(world.rank, step)?;
        let slice = StepSlice { step, micro_batch_size: t.micro_batch_size, grad_accum: t.grad_accum, rank: world.rank, world_size: world.size };
        let micro_batches: Vec<Batch> = (0..t.grad_accum)
            .map(|k| {
                let examples: Vec<Example> = slice.micro_batch_positions(k).map(|p| data.get(sampler.example_at(p))).collect();
                Batch::from_examples(&examples.iter().collect::<Vec<_>>(), pad_id)
            })
            .collect();
        let started = Instant::now();
        // A non-finite step applied no update; skipped, it is still a step done (the schedule moves on).
        if let Some(report) = skips.check(engine.step(&micro_batches), world.is_main())? {
            let mut peak = [report.peak_bytes as f64];
            engine.comm().all_reduce_scalars(&mut peak, ReduceOp::Max);
            let seconds = started.elapsed().as_secs_f64();
            if let Some(log) = &log {
                let state_bytes = engine.memory().current(Category::ModelStates);
                log.record(&StepMetrics::new(step + 1, &report, seconds, peak[0] as u64, state_bytes))?;
            }
        }

        interrupted = interrupt.agreed(engine.comm(), step + 1);
        let done = step + 1 == t.steps;
        let due = run.output.save_every > 0 && (step + 1) % run.output.save_every == 0;
        if interrupted || done || due {
            options.set_phase(&format!("the save of step {}", step + 1), true);
            let position = RunPosition {
                sampler: sampler.position(slice.end()),
                examples_per_step,
                model_config: &model_config_json,
                model_path: run.model.path.as_deref(),
                model_fingerprint: model_fingerprint.as_deref(),
                schedule: &schedule,
            };
            save(&engine, run, &position)?;
        }
        if interrupted {
            break;
        }
    }
    options.set_phase("the end of the run", true);
    // Every rank's peak resident memory, gathered on rank 0 (slot r holds rank r's).
    let mut peak_rss = vec![0.0; world.size];
    peak_rss[world.rank] = crate::threads::peak_rss_bytes() as f64;
    engine.comm().all_reduce_scalars(&mut peak_rss, ReduceOp::Sum);
    if let Some(log) = log {
        log.finish(&run.output.dir, world.size, peak_rss.iter().map(|&b| b as u64).collect())?;
    }
    if interrupted {
        if world.is_main() {
            println!("stopped on request after step {}: resume with --resume latest", engine.steps_done());
        }
        return Ok(());
    }

    if let Some(target) = export_target(run, &model_config) {
        let dir = export_at_end(&engine, target, &run.output.dir.join("final"), &model_config_json, run.model.path.as_deref())?;
        if world.is_main() {
            println!("exported {}", dir.display());
        }
    }
    Ok(())
}

/// What the end of the run exports, as `output.export` says.
fn export_target(run: &RunConfig, model: &MistralConfig) -> Option<ExportTarget> {
    match run.output.export {
        ExportFormat::None => None,
        ExportFormat::Peft => Some(ExportTarget::Peft),
        ExportFormat::Hf => Some(ExportTarget::Hf { dtype: model_dtype(model), max_shard_bytes: DEFAULT_MAX_SHARD_BYTES }),
    }
}

/// The tokenized dataset: rank 0 builds the cache (or finds it up to date) while the other
/// ranks wait, then every rank maps it. The cache lives under output.dir, which all ranks must
/// see (a shared file system when the job spans nodes).
/// A stop requested while the cache is built ends the build (its files removed) and the job.
fn open_dataset<B: Backend, C: Collective<B>>(run: &RunConfig, model: &MistralConfig, comm: &C, interrupt: &Interrupt) -> Result<Dataset> {
    let spec = run.data_spec(model);
    let dir = run.data_cache_dir();
    if comm.world().is_main() {
        match prepare_cache(&spec, &dir, interrupt.flag()) {
            Ok(prepared) => println!("data: {} ({})", prepared.stats, if prepared.built { "tokenized now" } else { "cached" }),
            Err(DataError::Stopped(_)) => {} // the check below stops every rank
            Err(e) => return Err(e.into()),
        }
    }
    interrupt.check_startup(comm, "building the dataset cache")?; // the other ranks wait here
    Ok(Dataset::open(&spec, &dir)?)
}

/// `train.on_nonfinite`: a step whose loss or gradient norm is not finite (the engine applied no
/// update) ends the run, or with "skip" is dropped, until too many come in a row.
struct NonFiniteSkips {
    on_nonfinite: OnNonFinite,
    max_in_a_row: u64,
    in_a_row: u64,
    total: u64,
}

impl NonFiniteSkips {
    fn new(run: &RunConfig) -> Self {
        Self { on_nonfinite: run.train.on_nonfinite, max_in_a_row: run.train.max_nonfinite_skips, in_a_row: 0, total: 0 }
    }

    /// The step's report, none for a skipped step, or the error that ends the run; every rank
    /// gets the same answer (the loss and the norm are global).
    fn check(&mut self, step: Result<StepReport, EngineError>, is_main: bool) -> Result<Option<StepReport>> {
        match step {
            Ok(report) => {
                self.in_a_row = 0;
                Ok(Some(report))
            }
            Err(e @ EngineError::NonFinite { .. }) => {
                self.in_a_row += 1;
                self.total += 1;
                let fail = |why: String| Err(OnEveryRank(anyhow::anyhow!("{e}; {why}; nothing of this step was saved")).into());
                match self.on_nonfinite {
                    OnNonFinite::Error => fail("train.on_nonfinite = \"error\" ends the run (\"skip\" drops such steps)".into()),
                    OnNonFinite::Skip if self.in_a_row >= self.max_in_a_row => {
                        fail(format!("{} non-finite steps in a row (train.max_nonfinite_skips = {})", self.in_a_row, self.max_in_a_row))
                    }
                    OnNonFinite::Skip => {
                        if is_main {
                            eprintln!("warning: {e}; step skipped ({} in a row, {} in all; train.on_nonfinite = \"skip\")", self.in_a_row, self.total);
                        }
                        Ok(None)
                    }
                }
            }
            Err(e) => Err(e.into()),
        }
    }
}

/// The schedule as the run config states it, for the save (a resume compares it).
fn schedule_state(run: &RunConfig) -> ScheduleState {
    let t = &run.train;
    let kind = match t.lr_schedule {
        run_config::LrSchedule::Constant => "constant",
        run_config::LrSchedule::Linear => "linear",
        run_config::LrSchedule::Cosine => "cosine",
    };
    ScheduleState { kind: kind.into(), lr: t.lr, warmup_steps: t.warmup_steps, total_steps: t.steps }
}

/// The adapters to train in LoRA mode.
pub fn lora_config(run: &RunConfig) -> Option<LoraConfig> {
    run.train.mode.trains_adapters().then(|| LoraConfig {
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
        precision: Precision { compute: float(run.compute_dtype()), reduce: float(run.runtime.reduce_dtype) },
    }
}

fn float(dtype: ComputeDtype) -> Float {
    match dtype {
        ComputeDtype::F32 => Float::F32,
        ComputeDtype::Bf16 => Float::Bf16,
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
