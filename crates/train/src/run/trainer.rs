//! The trainer of one rank: built once from the run config ([`Trainer::new`]: the shard groups,
//! the model's files, the data, the save to resume from, the engine), then [`Trainer::run`]
//! trains step by step. What happens around a step is up to components that know when they are
//! due: the [`Evaluator`], the [`Saver`], the [`RunChart`] and the [`MemoryPeaks`]; rank 0 keeps
//! the metrics log.

use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::tensor::backend::AutodiffBackend;
use shard_checkpoint::{HfCheckpoint, SavedCheckpoint, ScheduleState};
use shard_comm::{Collective, ReduceOp, World};
use shard_core::counted;
use shard_data::{Batch, BatchRules, Row, Sampler, StepSlice};
use shard_model::{MistralConfig, param_count, trainable_param_count};
use shard_plan::group_digits;
use shard_zero::{Category, Engine, StepReport};

use crate::config::record::write_run_record;
use crate::config::run_config::{Device, RunConfig, TrainMode};
use crate::data::run_data::RunData;
use crate::job::fault_injection::{self, FaultInjection};
use crate::job::job_end::agree;
use crate::job::shared_dir::check_shared;
use crate::metrics::log::{MetricsLog, StepMetrics};
use crate::metrics::memory_peaks::MemoryPeaks;
use crate::metrics::progress::ProgressMode;
use crate::metrics::run_chart::RunChart;
use crate::run::engine_setup::build_engine;
use crate::run::evaluator::Evaluator;
use crate::run::finite_params::FiniteParams;
use crate::run::nonfinite::NonFiniteSkips;
use crate::run::settings::{attention_path, export_target, f32_matmul, lora_config, schedule_state, train_settings};
use crate::run::shard_groups::shard_groups;
use crate::run::train::{RunOptions, TrainDevice};
use crate::saves::export::export_at_end;
use crate::saves::save::{ResumeChecks, RunPosition, open_resume, save};
use crate::saves::saver::Saver;
use crate::saves::tokenizer_files::ExportSources;
use crate::system::device_sync::check_kernels_ran;
use crate::system::topology::Topology;

pub struct Trainer<'a, B: AutodiffBackend, C: Collective<B::InnerBackend>> {
    run: &'a RunConfig,
    options: &'a RunOptions,
    world: World,
    engine: Engine<B, C>,
    model: ModelFiles,
    /// The training examples (the eval set is the evaluator's).
    data: RunData,
    sampler: Sampler,
    batch_rules: BatchRules,
    total_steps: u64,
    examples_per_step: u64,
    schedule: ScheduleState,
    finite: FiniteParams,
    skips: NonFiniteSkips,
    failure: FaultInjection,
    /// Rank 0's.
    log: Option<MetricsLog>,
    evaluator: Evaluator,
    saver: Saver,
    chart: RunChart,
    memory: MemoryPeaks,
    /// burn's handle to the device, for the device syncs that report failed kernels.
    device: B::Device,
}

/// A step that updated the model: its report, and when its timing started.
pub struct TrainedStep {
    pub report: StepReport,
    started: Instant,
}

impl<'a, B: AutodiffBackend, C: Collective<B::InnerBackend>> Trainer<'a, B, C> {
    /// Every rank's set-up, up to a trainer ready for its first step (the next one after a
    /// resumed save); none when the save resumed from is the run's last step (nothing to do, and
    /// nothing in output.dir changes). On a GPU, `device` carries the probe that reads its memory
    /// after each step.
    pub fn new(run: &'a RunConfig, options: &'a RunOptions, comm: C, device: TrainDevice<B::Device>) -> Result<Option<Self>> {
        let world = *comm.world();
        options.interrupt.check_startup(&comm, "config and plan")?;
        check_shared::<B::InnerBackend, C>(&run.output.dir, &comm)?;
        // Each rank meets a bad shard_size or model file alike: agreed, it is reported once.
        let groups = agree(&comm, shard_groups::<B::InnerBackend, C>(run.runtime.shard_size, &comm))?;
        let topology = Topology::gather::<B::InnerBackend, C>(&comm);
        let shard_size = groups.group.world().size;
        let model = agree(&comm, ModelFiles::read(run))?;
        let t = &run.train;
        let examples_per_step = (t.micro_batch_size * t.grad_accum * world.size) as u64;
        options.set_phase("start-up: the data cache", false);
        let mut data = RunData::open(run, &model.config, &comm, &options.interrupt)?;
        let total_steps = run_length(run, &data, examples_per_step, &world)?;
        let schedule = schedule_state(run, total_steps);
        let mut sampler = Sampler::new(data.train_rows.len(), run.data.shuffle, run.data.seed);
        let saved = open_saved::<B, C>(run, options, &model, examples_per_step, &schedule, &mut sampler, &comm)?;
        if let Some(done) = saved.as_ref().filter(|s| s.state().step >= total_steps) {
            if world.is_main() {
                println!(
                    "{} is step {} of {total_steps}: the run is complete, nothing to do (to train on, raise train.steps and resume with --allow-schedule-change)",
                    done.dir().display(),
                    done.state().step
                );
            }
            return Ok(None);
        }
        options.set_phase("start-up: the weights", false);
        let attention = attention_path::<B>(run, &model.config, device.host_cpu, world.is_main());
        let settings = train_settings(run, total_steps, attention);
        let engine = build_engine::<B, C>(run, &model.config, saved.as_ref(), settings, comm, groups, &device)?;
        drop(saved);
        check_kernels_ran::<B>(&device.handle, run.runtime.device, "loading the weights")?;
        options.interrupt.check_startup(engine.comm(), "loading the weights")?;
        let finite = FiniteParams::at_start(&engine);
        let log = if world.is_main() {
            announce(run, &world, &model.config, &data, total_steps, engine.memory().current(Category::ModelStates));
            // On a GPU, which kernels the f32 matmuls take (the CPU's are IEEE whatever runtime.tf32 says).
            if let Some(name) = f32_matmul::<B>(run).filter(|_| run.runtime.device != Device::Cpu) {
                println!("f32 matmul: {name}");
            }
            topology.header(shard_size).iter().for_each(|line| println!("{line}"));
            Some(open_log(run, total_steps, engine.steps_done(), options.progress)?)
        } else {
            None
        };
        let batch_rules =
            BatchRules { pad_id: model.config.eos_token_id.unwrap_or(0), seq_len: run.data.seq_len, hidden_size: model.config.hidden_size };
        Ok(Some(Self {
            evaluator: Evaluator::new(run, data.eval.take(), total_steps, world, batch_rules),
            saver: Saver::new(&run.output),
            chart: RunChart::new(run.output.dir.clone(), &world),
            memory: MemoryPeaks::new(device.memory),
            device: device.handle,
            skips: NonFiniteSkips::new(run),
            failure: fault_injection::from_env(),
            run,
            options,
            world,
            engine,
            model,
            data,
            sampler,
            batch_rules,
            total_steps,
            examples_per_step,
            schedule,
            finite,
            log,
        }))
    }

    /// Trains from the next step to the last (or until the ranks agree to stop on request),
    /// then reports the run's peaks and exports.
    pub fn run(mut self) -> Result<()> {
        let mut stopped = false;
        let first_step = self.engine.steps_done();
        for step in first_step..self.total_steps {
            let done = step + 1;
            self.options.set_phase(&format!("step {done}"), true);
            self.failure.check(self.world.rank, step)?;
            let trained = self.train_step(step)?;
            if step == first_step {
                check_kernels_ran::<B>(&self.device, self.run.runtime.device, "the first step")?;
            }
            if let Some(trained) = trained {
                self.record(done, trained)?;
            }
            stopped = self.options.interrupt.agreed(self.engine.comm(), done);
            let saved = self.saver.due(done, done == self.total_steps, stopped);
            if saved {
                self.save(step)?;
            }
            self.chart.after_step(saved);
            if stopped {
                break;
            }
        }
        self.finish(stopped)
    }

    /// One optimizer step (0-based `step`) over this rank's slice of the step's examples; none
    /// when the step was non-finite and skipped (it applied no update, but counts as done: the
    /// schedule moves on).
    pub fn train_step(&mut self, step: u64) -> Result<Option<TrainedStep>> {
        let slice = self.slice(step);
        let micro_batches: Vec<Batch> = (0..self.run.train.grad_accum)
            .map(|k| {
                let rows: Vec<Row> = slice
                    .micro_batch_positions(k)
                    .map(|p| self.data.dataset.get(self.data.train_rows[self.sampler.example_at(p)]))
                    .collect();
                Batch::new(&rows.iter().collect::<Vec<_>>(), &self.batch_rules)
            })
            .collect();
        let started = Instant::now();
        let report = self.skips.check(self.engine.step(&micro_batches), self.world.is_main())?;
        Ok(report.map(|report| TrainedStep { report, started }))
    }

    fn slice(&self, step: u64) -> StepSlice {
        let t = &self.run.train;
        StepSlice {
            step,
            micro_batch_size: t.micro_batch_size,
            grad_accum: t.grad_accum,
            rank: self.world.rank,
            world_size: self.world.size,
        }
    }

    /// A trained step's figures, and the eval loss when due, into the metrics log.
    fn record(&mut self, done: u64, trained: TrainedStep) -> Result<()> {
        let mut peak = [trained.report.peak_bytes as f64];
        self.engine.comm().all_reduce_scalars(&mut peak, ReduceOp::Max);
        let seconds = trained.started.elapsed().as_secs_f64();
        self.memory.after_step();
        let eval_loss = self.evaluator.maybe_eval(&mut self.engine, done)?;
        if let Some(log) = &self.log {
            let state_bytes = self.engine.memory().current(Category::ModelStates);
            let host_state_bytes = self.engine.memory().current(Category::HostStates);
            let epoch = (done * self.examples_per_step) as f64 / self.data.train_rows.len().max(1) as f64;
            let metrics = StepMetrics::new(done, epoch, &trained.report, seconds, peak[0] as u64, state_bytes);
            log.record(&StepMetrics { eval_loss, host_state_bytes, ..metrics })?;
        }
        Ok(())
    }

    /// The save after 0-based `step`, of finite parameters only.
    fn save(&self, step: u64) -> Result<()> {
        let done = step + 1;
        self.options.set_phase(&format!("the save of step {done}"), true);
        let position = RunPosition {
            sampler: self.sampler.position(self.slice(step).end()),
            examples_per_step: self.examples_per_step,
            model_config: &self.model.config_json,
            model_path: self.run.model.path.as_deref(),
            model_fingerprint: self.model.fingerprint.as_deref(),
            schedule: &self.schedule,
            chat_template: self.data.chat_template.as_deref(),
        };
        self.finite.ensure_finite(&self.engine, done, "save")?;
        save(&self.engine, self.run, &position)?;
        Ok(())
    }

    /// The run's summary with every rank's memory peaks, and the export unless it stopped on
    /// request.
    fn finish(mut self, stopped: bool) -> Result<()> {
        self.options.set_phase("the end of the run", true);
        let peaks = self.memory.gather::<B::InnerBackend, C>(self.engine.comm());
        if let Some(log) = self.log.take() {
            log.finish(&self.run.output.dir, self.world.size, peaks.resident_bytes, peaks.device, f32_matmul::<B>(self.run))?;
        }
        if stopped {
            if self.world.is_main() {
                println!("stopped on request after step {}: resume with --resume latest", self.engine.steps_done());
            }
            return Ok(());
        }
        self.export()
    }

    fn export(&self) -> Result<()> {
        let Some(target) = export_target(self.run, &self.model.config) else { return Ok(()) };
        if !self.run.output.save_at_end {
            self.finite.ensure_finite(&self.engine, self.engine.steps_done(), "export")?; // else the final save has checked them
        }
        let dir = export_at_end(
            &self.engine,
            target,
            &self.run.output.dir.join("final"),
            &self.model.config_json,
            &ExportSources {
                model_dir: self.run.model.path.as_deref(),
                tokenizer: self.run.data.tokenizer.as_deref(),
                chat_template: self.data.chat_template.as_deref(),
            },
        )?;
        if self.world.is_main() {
            println!("exported {}", dir.display());
        }
        Ok(())
    }
}

/// The model's config.json as read (saves and exports write it back unchanged) and as parsed,
/// and the fingerprint of its weights (none for a random init).
struct ModelFiles {
    config_json: serde_json::Value,
    config: MistralConfig,
    fingerprint: Option<String>,
}

impl ModelFiles {
    fn read(run: &RunConfig) -> Result<Self> {
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
        Ok(Self { config_json: json, config, fingerprint })
    }
}

/// The run's steps for its examples (`train.steps`, or what `train.epochs` makes), checked
/// against the warm-up; rank 0 warns when a step takes more examples than there are.
fn run_length(run: &RunConfig, data: &RunData, examples_per_step: u64, world: &World) -> Result<u64> {
    let t = &run.train;
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
    Ok(total_steps)
}

/// The save of `--resume`, checked against this run, with the sampler moved to where it stopped.
fn open_saved<B: AutodiffBackend, C: Collective<B::InnerBackend>>(
    run: &RunConfig,
    options: &RunOptions,
    model: &ModelFiles,
    examples_per_step: u64,
    schedule: &ScheduleState,
    sampler: &mut Sampler,
    comm: &C,
) -> Result<Option<SavedCheckpoint>> {
    options.set_phase("start-up: opening the save to resume from", false);
    let Some(spec) = options.resume.as_deref() else { return Ok(None) };
    let lora = lora_config(run);
    let checks = ResumeChecks {
        model: &model.config,
        lora: lora.as_ref(),
        examples_per_step,
        model_fingerprint: model.fingerprint.as_deref(),
        schedule,
        optimizer: run.train.optimizer.kind().name(),
        allow_schedule_change: options.allow_schedule_change,
    };
    let saved = agree(comm, open_resume::<B::InnerBackend, C>(run, spec, &checks, comm))?;
    let data_step = sampler.resume_step(saved.state().sampler, examples_per_step)?;
    anyhow::ensure!(
        data_step == saved.state().step,
        "the saved data position is step {data_step}, the optimizer's step {}",
        saved.state().step
    );
    Ok(Some(saved))
}

/// Rank 0's metrics log, after the run's record (run.toml).
fn open_log(run: &RunConfig, total_steps: u64, first_step: u64, progress: ProgressMode) -> Result<MetricsLog> {
    if first_step > 0 {
        println!("resumed after step {first_step}");
    }
    write_run_record(run, total_steps)?;
    MetricsLog::open(&run.output.dir, total_steps, first_step, run.output.tensorboard, progress)
}

fn announce(run: &RunConfig, world: &World, cfg: &MistralConfig, data: &RunData, total_steps: u64, state_bytes: u64) {
    let t = &run.train;
    let per_step = t.micro_batch_size * t.grad_accum * world.size;
    let trainable = match lora_config(run) {
        Some(lora) => format!(", {} trainable (the LoRA adapters)", group_digits(trainable_param_count(cfg, Some(&lora)))),
        None => String::new(),
    };
    println!(
        "shard-train: {} parameters{trainable}; model states {:.1} MiB per rank",
        group_digits(param_count(cfg)),
        state_bytes as f64 / (1 << 20) as f64,
    );
    let epochs = t.epochs.map_or(String::new(), |e| format!(" ({e} epochs)"));
    println!(
        "{}{epochs} of {} ({} per micro-batch x {} accumulation x {}) from {}",
        counted(total_steps, "step"),
        counted(per_step, "example"),
        t.micro_batch_size,
        t.grad_accum,
        counted(world.size, "rank"),
        counted(data.train_rows.len(), "example")
    );
    if let Some(packing) = data.dataset.packing_summary() {
        println!("{packing}");
    }
    if let Some(eval) = &data.eval {
        let every = run.eval.as_ref().map_or(0, |e| e.every);
        let when = if every > 0 { format!("every {every} steps and at the end") } else { "at the end".into() };
        println!("eval: {}, {when}", counted(eval.len(), "example"));
    }
}
