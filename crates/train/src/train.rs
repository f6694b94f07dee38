//! The run: one rank's part of a training run, from its run config to the export at the end.
//! Every rank builds its shards, then trains the configured steps (or epochs), evaluating every
//! `eval.every` steps and at the end, saving every `output.save_every` steps, at the end and when
//! asked to stop; rank 0 reports progress, writes metrics.jsonl, the charts and the final export.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::tensor::backend::AutodiffBackend;
use shard_checkpoint::{DEFAULT_MAX_SHARD_BYTES, HfCheckpoint, ScheduleState};
use shard_comm::{Collective, Phase, ReduceOp, World};
use shard_data::{Batch, BatchRules, Row, Sampler, StepSlice};
use shard_model::{LoraConfig, MistralConfig, param_count};
use shard_plan::group_digits;
use shard_zero::{AdamW, Category, LrSchedule, Precision, ScheduleKind, TrainSettings};

use crate::chart;
use crate::device_memory::{DeviceMemory, DeviceMemoryProbe};
use crate::engine_setup::build_engine;
use crate::export::{ExportTarget, export_at_end, model_dtype};
use crate::finite_params::FiniteParams;
use crate::interrupt::Interrupt;
use crate::job_end::agree;
use crate::metrics::{MetricsLog, StepMetrics};
use crate::nonfinite::NonFiniteSkips;
use crate::run_config::{self, ExportFormat, RunConfig, TrainMode};
use crate::run_data::RunData;
use crate::save::{ResumeChecks, RunPosition, save};
use crate::topology::Topology;

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

/// The device a rank trains on.
pub struct TrainDevice<D> {
    /// burn's handle to it.
    pub handle: D,
    /// On a GPU, reads its memory after each step, for the run's summary.
    pub memory: Option<DeviceMemoryProbe>,
    /// Its kernels run on the host's CPU (burn-flex, or wgpu on a software Vulkan driver such as
    /// lavapipe): QLoRA then dequantizes as bitsandbytes' CPU kernels do.
    pub host_cpu: bool,
}

/// Trains with backend `B` (its inner backend holds the shards; `B` recomputes in backward).
pub fn train<B: AutodiffBackend, C: Collective<B::InnerBackend>>(
    run: &RunConfig,
    options: &RunOptions,
    comm: C,
    device: TrainDevice<B::Device>,
) -> Result<()> {
    let world = *comm.world();
    let interrupt = &options.interrupt;
    interrupt.check_startup(&comm, "config and plan")?;
    crate::shared_dir::check_shared::<B::InnerBackend, C>(&run.output.dir, &comm)?;
    // Each rank meets a bad shard_size or model file alike: agreed, it is reported once.
    let groups = agree(&comm, crate::shard_groups::shard_groups::<B::InnerBackend, C>(run.runtime.shard_size, &comm))?;
    let topology = Topology::gather::<B::InnerBackend, C>(&comm);
    let shard_size = groups.group.world().size;
    let (model_config_json, model_config, model_fingerprint) = agree(&comm, read_model(run))?;
    let lora = lora_config(run);
    let t = &run.train;
    let examples_per_step = (t.micro_batch_size * t.grad_accum * world.size) as u64;
    options.set_phase("start-up: the data cache", false);
    let data = RunData::open(run, &model_config, &comm, interrupt)?;
    let total_steps = t.total_steps(data.train_rows.len(), examples_per_step);
    if let Some(epochs) = t.epochs {
        anyhow::ensure!(
            t.warmup_steps <= total_steps,
            "train.warmup_steps ({}) is more than the {total_steps} steps that train.epochs = {epochs} makes",
            t.warmup_steps
        );
    }
    if world.is_main() && examples_per_step as usize > data.train_rows.len() {
        eprintln!(
            "warning: a step takes {examples_per_step} examples (micro_batch_size x grad_accum x ranks) but {} holds {} to train on: examples repeat within a step",
            run.data.path.display(),
            data.train_rows.len()
        );
    }
    let schedule = schedule_state(run, total_steps);
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
    let mut sampler = Sampler::new(data.train_rows.len(), run.data.shuffle, run.data.seed);
    if let Some(saved) = &saved {
        let data_step = sampler.resume_step(saved.state().sampler, examples_per_step)?;
        anyhow::ensure!(
            data_step == saved.state().step,
            "the saved data position is step {data_step}, the optimizer's step {}",
            saved.state().step
        );
    }
    options.set_phase("start-up: the weights", false);
    let mut engine = build_engine::<B, C>(run, &model_config, saved.as_ref(), train_settings(run, total_steps), comm, groups, &device)?;
    drop(saved);
    crate::device_sync::check_kernels_ran::<B>(&device.handle, run.runtime.device, "loading the weights")?;
    interrupt.check_startup(engine.comm(), "loading the weights")?;
    let first_step = engine.steps_done();
    let finite = FiniteParams::at_start(&engine);

    let log = if world.is_main() {
        announce(run, &world, &model_config, &data, total_steps, engine.memory().current(Category::ModelStates));
        topology.header(shard_size).iter().for_each(|line| println!("{line}"));
        if first_step > 0 {
            println!("resumed after step {first_step}");
        }
        crate::record::write_run_record(run, total_steps)?;
        Some(MetricsLog::open(&run.output.dir, total_steps, first_step, run.output.tensorboard)?)
    } else {
        None
    };
    let failure = crate::fault_injection::from_env();
    let batch_rules =
        BatchRules { pad_id: model_config.eos_token_id.unwrap_or(0), seq_len: run.data.seq_len, hidden_size: model_config.hidden_size };
    let mut interrupted = false;
    let mut skips = NonFiniteSkips::new(run);
    let mut device_peak = DeviceMemory::default();
    for step in first_step..total_steps {
        options.set_phase(&format!("step {}", step + 1), true);
        failure.check(world.rank, step)?;
        let slice =
            StepSlice { step, micro_batch_size: t.micro_batch_size, grad_accum: t.grad_accum, rank: world.rank, world_size: world.size };
        let micro_batches: Vec<Batch> = (0..t.grad_accum)
            .map(|k| {
                let rows: Vec<Row> =
                    slice.micro_batch_positions(k).map(|p| data.dataset.get(data.train_rows[sampler.example_at(p)])).collect();
                Batch::new(&rows.iter().collect::<Vec<_>>(), &batch_rules)
            })
            .collect();
        let started = Instant::now();
        // A non-finite step applied no update; skipped, it is still a step done (the schedule moves on).
        let report = skips.check(engine.step(&micro_batches), world.is_main())?;
        if step == first_step {
            crate::device_sync::check_kernels_ran::<B>(&device.handle, run.runtime.device, "the first step")?;
        }
        let done = step + 1 == total_steps;
        if let Some(report) = report {
            let mut peak = [report.peak_bytes as f64];
            engine.comm().all_reduce_scalars(&mut peak, ReduceOp::Max);
            let seconds = started.elapsed().as_secs_f64();
            if let Some(probe) = &device.memory {
                device_peak = device_peak.max(probe());
            }
            let eval_due = run.eval.as_ref().is_some_and(|e| done || (e.every > 0 && (step + 1) % e.every == 0));
            let eval_loss = match (&data.eval, eval_due) {
                (Some(eval), true) => Some(engine.eval_loss(eval.rank_batches(&world, t.micro_batch_size, batch_rules))?.loss),
                _ => None,
            };
            if let Some(log) = &log {
                let state_bytes = engine.memory().current(Category::ModelStates);
                log.record(&StepMetrics { eval_loss, ..StepMetrics::new(step + 1, &report, seconds, peak[0] as u64, state_bytes) })?;
            }
        }

        interrupted = interrupt.agreed(engine.comm(), step + 1);
        let due = run.output.save_every > 0 && (step + 1) % run.output.save_every == 0;
        if interrupted || (done && run.output.save_at_end) || due {
            options.set_phase(&format!("the save of step {}", step + 1), true);
            let position = RunPosition {
                sampler: sampler.position(slice.end()),
                examples_per_step,
                model_config: &model_config_json,
                model_path: run.model.path.as_deref(),
                model_fingerprint: model_fingerprint.as_deref(),
                schedule: &schedule,
            };
            finite.ensure_finite(&engine, step + 1, "save")?;
            save(&engine, run, &position)?;
            if world.is_main()
                && let Err(e) = chart::draw_run(&run.output.dir)
            {
                eprintln!("warning: the loss chart was not redrawn: {e:#}"); // the save is made: train on
            }
        }
        if interrupted {
            break;
        }
    }
    options.set_phase("the end of the run", true);
    // Every rank's peak resident memory, in rank order.
    let peak_rss = engine.comm().all_gather_scalars(&[crate::threads::peak_rss_bytes() as f64]);
    // And on a GPU its device memory, three figures per rank.
    let device_peaks = device
        .memory
        .map(|_| engine.comm().all_gather_scalars(&device_peak.to_scalars()).chunks(3).map(DeviceMemory::from_scalars).collect());
    if let Some(log) = log {
        log.finish(&run.output.dir, world.size, peak_rss.iter().map(|&b| b as u64).collect(), device_peaks)?;
    }
    if interrupted {
        if world.is_main() {
            println!("stopped on request after step {}: resume with --resume latest", engine.steps_done());
        }
        return Ok(());
    }

    if let Some(target) = export_target(run, &model_config) {
        if !run.output.save_at_end {
            finite.ensure_finite(&engine, engine.steps_done(), "export")?; // else the final save has checked them
        }
        let dir = export_at_end(&engine, target, &run.output.dir.join("final"), &model_config_json, run.model.path.as_deref())?;
        if world.is_main() {
            println!("exported {}", dir.display());
        }
    }
    Ok(())
}

/// The model's config.json as read (saves and exports write it back unchanged) and as parsed,
/// and the fingerprint of its weights (none for a random init).
fn read_model(run: &RunConfig) -> Result<(serde_json::Value, MistralConfig, Option<String>)> {
    let config_path = run.model_config_path();
    let text = std::fs::read_to_string(&config_path).with_context(|| format!("cannot read {}", config_path.display()))?;
    let json: serde_json::Value = serde_json::from_str(&text).with_context(|| format!("{}: not valid JSON", config_path.display()))?;
    let config = MistralConfig::from_json(&json, &config_path)?;
    if shard_checkpoint::is_quantized(&json) && run.train.mode != TrainMode::Qlora {
        bail!(
            "{}: `quantization_config`: model.path is a quantized (bitsandbytes NF4) checkpoint; train.mode = \"full\" and \"lora\" need the float checkpoint it was made from (an NF4 base trains with train.mode = \"qlora\")",
            config_path.display()
        );
    }
    let fingerprint = run.model.path.as_deref().map(HfCheckpoint::open).transpose()?.map(|c| c.fingerprint());
    Ok((json, config, fingerprint))
}

/// What the end of the run exports, as `output.export` says.
fn export_target(run: &RunConfig, model: &MistralConfig) -> Option<ExportTarget> {
    match run.output.export {
        ExportFormat::None => None,
        ExportFormat::Peft => Some(ExportTarget::Peft),
        ExportFormat::Hf => Some(ExportTarget::Hf { dtype: model_dtype(model), max_shard_bytes: DEFAULT_MAX_SHARD_BYTES }),
    }
}

/// The schedule as the run config states it, for the save (a resume compares it).
fn schedule_state(run: &RunConfig, total_steps: u64) -> ScheduleState {
    let t = &run.train;
    let kind = match t.lr_schedule {
        run_config::LrSchedule::Constant => "constant",
        run_config::LrSchedule::Linear => "linear",
        run_config::LrSchedule::Cosine => "cosine",
    };
    ScheduleState { kind: kind.into(), lr: t.lr, warmup_steps: t.warmup_steps, total_steps }
}

/// The adapters to train in LoRA and QLoRA modes.
pub fn lora_config(run: &RunConfig) -> Option<LoraConfig> {
    run.train.mode.trains_adapters().then(|| run.lora.config())
}

fn train_settings(run: &RunConfig, total_steps: u64) -> TrainSettings {
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
            total_steps,
        },
        max_grad_norm: t.max_grad_norm,
        seed: t.seed,
        precision: Precision { compute: run.compute_dtype().float(), reduce: run.runtime.reduce_dtype.float() },
    }
}

fn announce(run: &RunConfig, world: &World, cfg: &MistralConfig, data: &RunData, total_steps: u64, state_bytes: u64) {
    let t = &run.train;
    let per_step = t.micro_batch_size * t.grad_accum * world.size;
    println!(
        "shard-train: {} parameters; model states {:.1} MiB per rank",
        group_digits(param_count(cfg)),
        state_bytes as f64 / (1 << 20) as f64,
    );
    let epochs = t.epochs.map_or(String::new(), |e| format!(" ({e} epochs)"));
    println!(
        "{total_steps} steps{epochs} of {per_step} examples ({} per micro-batch x {} accumulation x {} ranks) from {} examples",
        t.micro_batch_size,
        t.grad_accum,
        world.size,
        data.train_rows.len()
    );
    if let Some(packing) = data.dataset.packing_summary() {
        println!("{packing}");
    }
    if let Some(eval) = &data.eval {
        let every = run.eval.as_ref().map_or(0, |e| e.every);
        let when = if every > 0 { format!("every {every} steps and at the end") } else { "at the end".into() };
        println!("eval: {} examples, {when}", eval.len());
    }
}
