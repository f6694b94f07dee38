//! `shard-train plan`: memory per rank, time and cost of a run before it starts, from a run
//! config or from flags for a quick question.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Result, bail};
use shard_model::LoraConfig;
use shard_plan::{Dtype, Hardware, Job, Kind, Mode, parse_count, parse_fraction, parse_gpu, parse_positive, parse_projection, parse_size};
use shard_train_core::config::plan::{base_job, config_sequences, limit_for};
use shard_train_core::config::run_config::{LoraSection, Override, parse_override};

#[derive(clap::Args)]
pub struct PlanArgs {
    /// A run config (TOML): model, mode, batch, sequence length, steps and device as `train` would
    /// use them. The flags below override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Override a key of --config, as `train --set` does (repeatable), e.g. `--set data.seq_len=2048`.
    #[arg(long = "set", value_name = "KEY=VALUE", value_parser = parse_override)]
    overrides: Vec<Override>,
    /// A checkpoint directory or a config.json (when there is no --config).
    #[arg(long)]
    model: Option<PathBuf>,
    /// What is trained [default: full].
    #[arg(long, value_enum)]
    mode: Option<ModeArg>,
    /// Ranks: GPUs, or CPU processes under mpirun [default: 1].
    #[arg(long, visible_alias = "ranks", value_parser = parse_count)]
    gpus: Option<usize>,
    /// Ranks per node [default: up to 8 GPUs per node; every CPU rank on one host].
    #[arg(long, value_parser = parse_count)]
    gpus_per_node: Option<usize>,
    /// A GPU preset: peak FLOP/s (bf16, f32), memory and link bandwidths [default: a100-80gb].
    #[arg(long, value_parser = parse_gpu)]
    gpu: Option<Hardware>,
    /// `cpu`: the CPU engine as it runs (f32, host memory); `cuda`: the GPU design [default: cuda,
    /// or runtime.device of --config].
    #[arg(long, value_enum)]
    device: Option<DeviceArg>,
    /// Memory each rank may use, e.g. 80GB (10^9 bytes) or 80GiB; overrides the preset's (on the
    /// CPU: the host's available memory divided by its ranks).
    #[arg(long, value_parser = parse_size)]
    gpu_memory: Option<u64>,
    /// Sequences per rank per micro-batch [default: 1].
    #[arg(long, value_parser = parse_count)]
    micro_batch: Option<usize>,
    /// Micro-batches per optimizer step [default: 1].
    #[arg(long, value_parser = parse_count)]
    grad_accum: Option<usize>,
    /// Tokens per sequence [default: 1024].
    #[arg(long, value_parser = clap::value_parser!(u32).range(2..))]
    seq_len: Option<u32>,
    /// Sequences in the dataset, for the run's duration and cost.
    #[arg(long, value_parser = parse_count)]
    examples: Option<usize>,
    /// Passes over the dataset.
    #[arg(long, default_value_t = 1.0, value_parser = parse_positive)]
    epochs: f64,
    /// LoRA rank (for --mode lora|qlora and --compare) [default: 16, or lora.r of --config].
    #[arg(long, value_parser = parse_count)]
    lora_r: Option<usize>,
    /// Projections with adapters, comma-separated [default: q_proj,k_proj,v_proj,o_proj].
    #[arg(long, value_delimiter = ',', value_parser = parse_projection)]
    lora_targets: Option<Vec<String>>,
    /// Compute dtype [default: bf16 on GPUs, f32 on the CPU].
    #[arg(long, value_enum)]
    dtype: Option<DtypeArg>,
    /// Assumed model FLOP utilisation, in (0, 1] [default: 0.4].
    #[arg(long, value_parser = parse_fraction)]
    mfu: Option<f64>,
    /// Memory kept free: 5% or 0.05 [default: 5%].
    #[arg(long, value_parser = parse_fraction)]
    margin: Option<f64>,
    /// Bytes/s between ranks of a node (one direction), e.g. 300GB; overrides the preset's.
    #[arg(long, value_parser = parse_size)]
    intra_node_bandwidth: Option<u64>,
    /// Bytes/s per rank across nodes, e.g. 25GB; overrides the preset's.
    #[arg(long, value_parser = parse_size)]
    inter_node_bandwidth: Option<u64>,
    /// The attention to plan for: fused (no [b, heads, s, s] scores kept, masked tiles skipped;
    /// the engine's default) or eager (`runtime.attention`) [default: fused].
    #[arg(long, value_enum)]
    attention: Option<AttentionArg>,
    /// Assume no prefetch of the next unit on GPUs (the CPU engine never prefetches).
    #[arg(long)]
    no_prefetch: bool,
    /// Price of one GPU-hour, for the cost.
    #[arg(long, value_parser = parse_positive)]
    price_per_gpu_hour: Option<f64>,
    /// One table for the same job as full FT on 1 GPU, ZeRO-3 full FT on 2, 4, 8 and --gpus,
    /// LoRA on 1 and on --gpus, QLoRA on 1.
    #[arg(long, conflicts_with = "fit")]
    compare: bool,
    /// The fewest GPUs on which the job fits, then the largest micro-batch that fits on them.
    #[arg(long)]
    fit: bool,
    /// JSON for tools: {"model", "assumptions", "strategies": [...]}, one object per strategy.
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ModeArg {
    Full,
    Lora,
    Qlora,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum DeviceArg {
    Cpu,
    Cuda,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum DtypeArg {
    F32,
    Bf16,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum AttentionArg {
    Fused,
    Eager,
}

pub fn run(args: PlanArgs) -> Result<()> {
    let mut out = std::io::stdout().lock();
    let (job, lora) = job_from_args(&args)?;
    let plans = if args.compare {
        shard_plan::compare(&job, &lora)?
    } else if args.fit {
        vec![shard_plan::fit(&job)?]
    } else {
        vec![shard_plan::plan(&job)?]
    };
    if args.json {
        writeln!(out, "{}", shard_plan::json(&job, &plans))?;
    } else if args.compare {
        write!(out, "{}", shard_plan::compare_table(&job, &plans))?;
    } else {
        let p = &plans[0];
        if args.fit {
            writeln!(out, "fewest GPUs that fit: {}; largest micro-batch on them: {}\n", p.gpus, p.micro_batch)?;
        }
        let fitted = Job { gpus: p.gpus, micro_batch: p.micro_batch, optimizer: p.optimizer, offload: p.offload, ..job };
        write!(out, "{}", shard_plan::table(&fitted, p))?;
    }
    Ok(())
}

/// The job the flags (and run config, if any) describe, and the LoRA config for --compare.
fn job_from_args(args: &PlanArgs) -> Result<(Job, LoraConfig)> {
    let gpus = args.gpus.unwrap_or(1);
    let (mut job, run) =
        base_job(args.config.as_deref(), &args.overrides, args.model.as_deref(), gpus, args.gpus_per_node.unwrap_or(gpus))?;
    let mut lora = job.mode.lora().cloned().unwrap_or_else(|| LoraSection::default().config());
    apply_flags(args, &mut job, &mut lora)?;
    if let (Some(run), None) = (&run, args.examples) {
        job.sequences = config_sequences(run, &job);
    }
    job.memory_limit = match args.gpu_memory.or(run.as_ref().and_then(|r| r.runtime.gpu_memory_bytes())) {
        Some(bytes) => Some(bytes),
        None => limit_for(&job)?,
    };
    Ok((job, lora))
}

/// Flags override what the run config or the defaults say.
fn apply_flags(args: &PlanArgs, job: &mut Job, lora: &mut LoraConfig) -> Result<()> {
    let hardware = match (args.device, &args.gpu) {
        (Some(DeviceArg::Cpu), Some(gpu)) if gpu.kind == Kind::Gpu => {
            bail!("--gpu {} is a GPU, but --device cpu plans the CPU engine", gpu.name)
        }
        (_, Some(gpu)) => Some(gpu.clone()),
        (Some(DeviceArg::Cpu), None) => Some(Hardware::cpu()),
        (Some(DeviceArg::Cuda), None) if job.hardware.kind == Kind::Cpu => Some(Hardware::preset("a100-80gb").expect("a preset")),
        _ => None,
    };
    if let Some(hardware) = hardware {
        job.set_hardware(hardware);
    }
    job.gpus_per_node = match (args.gpus_per_node, job.hardware.kind) {
        (Some(per_node), _) => per_node,
        (None, Kind::Cpu) if args.config.is_none() => job.gpus,
        (None, Kind::Gpu) if args.config.is_none() => 8,
        (None, _) => job.gpus_per_node,
    };
    lora.r = args.lora_r.unwrap_or(lora.r);
    lora.targets = args.lora_targets.clone().unwrap_or_else(|| lora.targets.clone());
    job.mode = match (args.mode, &job.mode) {
        (Some(ModeArg::Full), _) | (None, Mode::Full) => Mode::Full,
        (Some(ModeArg::Lora), _) | (None, Mode::Lora(_)) => Mode::Lora(lora.clone()),
        (Some(ModeArg::Qlora), _) | (None, Mode::Qlora(_)) => Mode::Qlora(lora.clone()),
    };
    if let Some(dtype) = args.dtype {
        job.precision = match dtype {
            DtypeArg::F32 => Dtype::F32,
            DtypeArg::Bf16 => Dtype::Bf16,
        };
    }
    job.micro_batch = args.micro_batch.unwrap_or(job.micro_batch);
    job.grad_accum = args.grad_accum.unwrap_or(job.grad_accum);
    job.seq_len = args.seq_len.map_or(job.seq_len, |seq| seq as usize);
    job.sequences = args.examples.map(|examples| examples as f64 * args.epochs).or(job.sequences);
    job.hardware.intra_node_bandwidth = args.intra_node_bandwidth.map_or(job.hardware.intra_node_bandwidth, |b| b as f64);
    job.hardware.inter_node_bandwidth = args.inter_node_bandwidth.map_or(job.hardware.inter_node_bandwidth, |b| b as f64);
    if let Some(mfu) = args.mfu {
        if mfu == 0.0 {
            bail!("--mfu 0: a run that uses none of the GPU never ends; give e.g. 0.4");
        }
        job.assumptions.mfu = mfu;
    }
    if let Some(margin) = args.margin {
        if margin >= 1.0 {
            bail!("--margin {margin}: keeping all of the memory free leaves nothing to train in; give e.g. 5% or 0.05");
        }
        job.assumptions.margin = margin;
    }
    if let Some(attention) = args.attention {
        job.assumptions.fused_attention = attention == AttentionArg::Fused;
    }
    job.assumptions.prefetch &= !args.no_prefetch;
    job.price_per_gpu_hour = args.price_per_gpu_hour.or(job.price_per_gpu_hour);
    Ok(())
}
