//! The plan of a run config: the job the planner sees for it, and the check a run makes before
//! loading weights.

use std::path::Path;

use anyhow::{Context, Result, bail};
use shard_comm::World;
use shard_core::AttentionPath;
use shard_data::Dataset;
use shard_model::MistralConfig;
use shard_plan::{Assumptions, Hardware, Job, Kind, Mode, Optimizer, human};

use crate::config::run_config::{Device, Override, RunConfig, TrainMode};
use crate::data::run_data::hold_out;

/// Before any rank loads weights: plans the run for this world, prints the plan on rank 0, and
/// stops a run that will not fit unless `force`. On the CPU the limit is the host's available
/// memory (/proc/meminfo) divided by the ranks on it; on cuda, runtime.gpu_memory or the memory
/// of runtime.gpu (the check is skipped, with a note, when neither is given).
pub fn check_before_training(run: &RunConfig, world: &World, force: bool) -> Result<()> {
    let model = load_model(run)?;
    check_data_setup(run, &model)?;
    let job = job_from_config(run, model, world.size, world.local_size)?;
    let plan = shard_plan::plan(&job).context("planning the run")?;
    if world.is_main() {
        print!("{}", shard_plan::table(&job, &plan));
        if plan.fits.is_none() {
            println!("(set runtime.gpu or runtime.gpu_memory to check that the run fits before it starts)");
        }
    }
    if plan.fits == Some(false) {
        let limit = plan.memory_limit_bytes.map_or("?".into(), human);
        let msg = format!(
            "the plan needs {} per rank (peak at \"{}\") but {limit} is available with a {:.0}% margin",
            human(plan.per_rank_bytes.total),
            plan.peak_at,
            job.assumptions.margin * 100.0
        );
        refuse_unless_forced(msg, world, force)?;
    }
    Ok(())
}

/// The data's tokenizer, special tokens, field mapping and chat template (and the eval file's),
/// checked before the plan is printed so that their errors are not lost under it.
fn check_data_setup(run: &RunConfig, model: &MistralConfig) -> Result<()> {
    shard_data::check_setup(&run.data_spec(model))?;
    if let Some((spec, _)) = run.eval_file_spec(model) {
        shard_data::check_setup(&spec)?;
    }
    Ok(())
}

/// What a run that does not fit can change.
const LEVERS: &str = "use more ranks, a smaller train.micro_batch_size or data.seq_len, or LoRA; `shard-train plan --config FILE \
                      --fit` finds the fewest ranks that fit, `--compare` weighs the strategies (`train --force` tries anyway)";

/// Stops the run with `msg` and the levers, or with `force` warns (on rank 0) and goes on.
fn refuse_unless_forced(msg: String, world: &World, force: bool) -> Result<()> {
    if !force {
        bail!("{msg}: {LEVERS}");
    }
    if world.is_main() {
        println!("warning: {msg}; training anyway (--force)");
    }
    Ok(())
}

/// After [`check_before_training`] and the node check, on a GPU: stops a run whose plan needs more
/// per rank than `device` has free now (`free_bytes`, e.g. cuMemGetInfo's after the CUDA context
/// is made), unless `force`, instead of an out-of-memory panic on the device's thread mid-run.
pub fn check_free_device_memory(run: &RunConfig, world: &World, device: &str, free_bytes: u64, force: bool) -> Result<()> {
    let job = job_from_config(run, load_model(run)?, world.size, world.local_size)?;
    let plan = shard_plan::plan(&job).context("planning the run")?;
    match free_memory_shortfall(plan.per_rank_bytes.total, plan.peak_at, device, free_bytes, job.assumptions.margin) {
        Some(msg) => refuse_unless_forced(msg, world, force),
        None => Ok(()),
    }
}

/// Why `needed` bytes (peak at `peak_at`) do not fit in `free` bytes kept `margin` free, as the
/// plan's own limit is applied; `None` when they fit.
fn free_memory_shortfall(needed: u64, peak_at: &str, device: &str, free: u64, margin: f64) -> Option<String> {
    let usable = (free as f64 * (1.0 - margin)) as u64;
    (needed > usable).then(|| {
        format!(
            "the plan needs {} per rank (peak at \"{peak_at}\") but {device} has {} free ({} with the plan's {:.0}% margin)",
            human(needed),
            human(free),
            human(usable),
            margin * 100.0
        )
    })
}

/// The job a run config describes on `gpus` ranks, `per_node` of them on each host.
pub fn job_from_config(run: &RunConfig, model: MistralConfig, gpus: usize, per_node: usize) -> Result<Job> {
    let cpu = run.runtime.device == Device::Cpu;
    let hardware = match (&run.runtime.gpu, cpu) {
        (_, true) => Hardware::cpu(),
        (Some(name), false) => Hardware::preset(name).expect("runtime.gpu is validated at load"),
        (None, false) => Hardware {
            name: "GPU (runtime.gpu not set: a100-80gb figures)".into(),
            memory: None,
            ..Hardware::preset("a100-80gb").expect("a preset")
        },
    };
    let mode = match (run.train.mode, crate::run::settings::lora_config(run)) {
        (TrainMode::Lora, Some(lora)) => Mode::Lora(lora),
        (TrainMode::Qlora, Some(lora)) => Mode::Qlora(lora),
        _ => Mode::Full,
    };
    let optimizer = match run.train.optimizer {
        crate::config::run_config::Optimizer::Adamw => Optimizer::AdamW,
        crate::config::run_config::Optimizer::Adamw8bit => Optimizer::AdamW8bit,
    };
    let mut job = Job {
        model,
        mode,
        optimizer,
        offload: run.runtime.offload == crate::config::run_config::Offload::Optimizer,
        precision: run.compute_dtype(),
        reduce: run.runtime.reduce_dtype,
        assumptions: Assumptions::for_kind(hardware.kind),
        hardware,
        gpus,
        gpus_per_node: per_node,
        micro_batch: run.train.micro_batch_size,
        grad_accum: run.train.grad_accum,
        seq_len: run.data.seq_len,
        sequences: None,
        memory_limit: None,
        price_per_gpu_hour: None,
    };
    job.memory_limit = match run.runtime.gpu_memory_bytes() {
        Some(bytes) => Some(bytes),
        None => limit_for(&job)?,
    };
    job.sequences = config_sequences(run, &job);
    // bf16 on the CPU attends eagerly whatever runtime.attention says (shard_kernels::fused_attention).
    let cpu_bf16 = cpu && job.precision == shard_core::Dtype::Bf16;
    job.assumptions.fused_attention = run.runtime.attention == AttentionPath::Fused && !cpu_bf16;
    Ok(job)
}

/// The sequences the run config trains on with `job`'s ranks and batch: `train.steps` steps'
/// worth, or with `train.epochs`, as many steps as the passes over its training rows take when
/// its data is tokenized already (by `data preview` or an earlier run); unknown otherwise.
pub fn config_sequences(run: &RunConfig, job: &Job) -> Option<f64> {
    let rows = match run.train.epochs {
        Some(_) => training_rows(run, &job.model)?,
        None => 0,
    };
    let examples_per_step = (job.micro_batch * job.grad_accum * job.gpus) as u64;
    Some((run.train.total_steps(rows, examples_per_step) * examples_per_step) as f64)
}

/// The rows a run trains on, when its data is tokenized already.
fn training_rows(run: &RunConfig, model: &MistralConfig) -> Option<usize> {
    let dataset = Dataset::open(&run.data_spec(model), &run.data_cache_dir()).ok()?;
    let fraction = run.eval.as_ref().and_then(|e| e.fraction);
    Some(fraction.map_or(dataset.len(), |f| hold_out(dataset.len(), f, run.data.seed).0.len()))
}

/// The model's config.json, the one file of the model a plan reads.
pub fn load_model(run: &RunConfig) -> Result<MistralConfig> {
    let key = if run.model.path.is_some() { "model.path" } else { "model.config" };
    MistralConfig::from_file(&run.model_config_path()).with_context(|| format!("{key}: the model's config.json"))
}

/// The job `plan` starts from before its flags: the run config's at `config` (with `overrides`,
/// its `--set`s) on `gpus` ranks, `per_node` to a host, or the quick question's defaults for the
/// model at `model`.
pub fn base_job(
    config: Option<&Path>,
    overrides: &[Override],
    model: Option<&Path>,
    gpus: usize,
    per_node: usize,
) -> Result<(Job, Option<RunConfig>)> {
    match (config, model) {
        (Some(_), Some(_)) => bail!("give either --config (a run config) or --model, not both"),
        (None, Some(_)) if !overrides.is_empty() => bail!("--set changes a run config's key: it needs --config FILE.toml"),
        (Some(path), None) => {
            let run = RunConfig::load_for_plan(path, overrides)?;
            Ok((job_from_config(&run, load_model(&run)?, gpus, per_node)?, Some(run)))
        }
        (None, Some(path)) => Ok((Job::new(load_model_at(path)?, gpus), None)),
        (None, None) => bail!("give --model DIR|config.json (a quick question) or --config FILE.toml (a run config)"),
    }
}

/// The model of `path`: a checkpoint directory or a config.json.
fn load_model_at(path: &Path) -> Result<MistralConfig> {
    let file = if path.is_dir() { path.join("config.json") } else { path.to_owned() };
    MistralConfig::from_file(&file).with_context(|| format!("--model {}", path.display()))
}

/// The memory each rank may use: a GPU preset's memory, or on the CPU this host's available
/// memory shared by the job's ranks on it.
pub fn limit_for(job: &Job) -> Result<Option<u64>> {
    match job.hardware.kind {
        Kind::Gpu => Ok(job.hardware.memory),
        Kind::Cpu => Ok(Some(available_host_memory()? / job.gpus.min(job.gpus_per_node) as u64)),
    }
}

/// MemAvailable of /proc/meminfo, in bytes.
fn available_host_memory() -> Result<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo")
        .context("cannot read /proc/meminfo for the host's available memory (give --gpu-memory)")?;
    meminfo
        .lines()
        .find_map(|line| line.strip_prefix("MemAvailable:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kib| kib * 1024)
        .context("/proc/meminfo has no MemAvailable line (give --gpu-memory)")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A plan above the device's free memory (less the margin) is refused with both figures.
    #[test]
    fn a_plan_above_the_free_device_memory_is_refused_with_both_figures() {
        let gib = 1u64 << 30;
        let msg = free_memory_shortfall(75 * gib, "layer 3 backward", "GPU 0", 78 * gib, 0.05).expect("75 GiB > 95% of 78 GiB");
        assert!(msg.contains(&human(75 * gib)) && msg.contains(&human(78 * gib)), "{msg}");
        assert!(msg.contains("layer 3 backward") && msg.contains("GPU 0") && msg.contains("5% margin"), "{msg}");
        assert_eq!(free_memory_shortfall(74 * gib, "layer 3 backward", "GPU 0", 78 * gib, 0.05), None, "74 GiB <= 95% of 78 GiB");
    }

    /// The refusal ends in the plan's levers; `--force` turns it into a warning.
    #[test]
    fn a_refusal_names_the_levers_and_force_goes_on() {
        let world = World { rank: 1, size: 2, local_rank: 1, local_size: 2, nodes: 1 };
        let err = refuse_unless_forced("too big".into(), &world, false).unwrap_err().to_string();
        assert!(err.starts_with("too big: use more ranks") && err.contains("--fit") && err.contains("train --force"), "{err}");
        assert!(refuse_unless_forced("too big".into(), &world, true).is_ok());
    }
}
