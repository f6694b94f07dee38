//! One plan: memory and time for one job, and whether it fits.

use serde::Serialize;

use crate::deepspeed;
use crate::memory::{self, PerRank};
use crate::time::{self, Time};
use crate::units::units;
use crate::{Job, Kind, Mode, Optimizer, PlanError, offload};

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Plan {
    /// `full`, `zero3-full`, `lora`, `zero3-lora`, `qlora`, `zero3-qlora`.
    pub strategy: String,
    /// The strategy in words, e.g. "ZeRO-3 full FT, 4 GPUs".
    pub label: String,
    pub gpus: usize,
    pub nodes: usize,
    pub micro_batch: usize,
    /// The optimizer and where its states live: as asked, or the lever `fit` pulled.
    pub optimizer: Optimizer,
    pub offload: bool,
    pub memory_limit_bytes: Option<u64>,
    /// `total <= (1 - margin) x limit` (and with offload, the node's host states within its
    /// host memory likewise); `None` when no limit is known.
    pub fits: Option<bool>,
    /// With offload: the states the ranks of one node keep in its host memory.
    pub host_bytes_per_node: Option<u64>,
    pub per_rank_bytes: PerRank,
    /// The moment of the step where the total is reached.
    pub peak_at: &'static str,
    /// DeepSpeed's ZeRO-3 estimate for the same model and GPU count (full fine-tuning only).
    pub deepspeed_zero3_model_states_bytes: Option<u64>,
    #[serde(flatten)]
    pub time: Time,
}

pub fn plan(job: &Job) -> Result<Plan, PlanError> {
    job.check()?;
    let units = units(job);
    let memory = memory::memory(job, &units);
    let total = memory.per_rank.total;
    let host_bytes_per_node = job.offload.then(|| memory.per_rank.host_states * job.gpus.min(job.gpus_per_node) as u64);
    let within = |bytes: u64, limit: u64| bytes as f64 <= limit as f64 * (1.0 - job.assumptions.margin);
    let host_fits = host_bytes_per_node.is_none_or(|bytes| within(bytes, offload::HOST_MEMORY_PER_NODE));
    // DeepSpeed's estimate without offload, for the same states.
    let deepspeed = (job.mode == Mode::Full && job.hardware.kind == Kind::Gpu && Levers::of(job).none()).then(|| {
        let (params, largest) = deepspeed::model_to_params(&job.model);
        deepspeed::zero3_model_states_gpu_bytes(params, largest, job.gpus as u64)
    });
    Ok(Plan {
        strategy: strategy_id(job),
        label: label(job),
        gpus: job.gpus,
        nodes: job.nodes(),
        micro_batch: job.micro_batch,
        optimizer: job.optimizer,
        offload: job.offload,
        memory_limit_bytes: job.memory_limit,
        fits: job.memory_limit.map(|limit| within(total, limit) && host_fits),
        host_bytes_per_node,
        per_rank_bytes: memory.per_rank,
        peak_at: memory.peak_at,
        deepspeed_zero3_model_states_bytes: deepspeed,
        time: time::time(job, &units),
    })
}

fn strategy_id(job: &Job) -> String {
    let mode = match job.mode {
        Mode::Full => "full",
        Mode::Lora(_) => "lora",
        Mode::Qlora(_) => "qlora",
    };
    let zero3 = if job.gpus > 1 { "zero3-" } else { "" };
    format!("{zero3}{mode}{}", Levers::of(job).names().id_suffix)
}

/// The levers for fewer or smaller GPUs that a job pulls (8-bit Adam states, the optimizer
/// offloaded to the host), named here for each place the plan shows them.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Levers {
    optimizer: Optimizer,
    offload: bool,
}

impl Levers {
    pub(crate) fn of(job: &Job) -> Self {
        Self { optimizer: job.optimizer, offload: job.offload }
    }

    /// Whether the job pulls none (AdamW's f32 states on the device).
    fn none(self) -> bool {
        self.optimizer == Optimizer::AdamW && !self.offload
    }

    /// The levers' names, one row per combination so that the three stay in step.
    pub(crate) fn names(self) -> LeverNames {
        let (id_suffix, label_suffix, header_suffix) = match (self.optimizer, self.offload) {
            (Optimizer::AdamW, false) => ("", "", ""),
            (Optimizer::AdamW8bit, false) => ("-adamw8bit", " 8bit", ", 8-bit AdamW"),
            (Optimizer::AdamW, true) => ("-offload", " offl.", ", AdamW offloaded to the host"),
            (Optimizer::AdamW8bit, true) => ("-adamw8bit-offload", " 8bit+offl.", ", 8-bit AdamW offloaded to the host"),
        };
        LeverNames { id_suffix, label_suffix, header_suffix }
    }
}

/// What [`Levers`] append to a strategy's id, its compare label and the plan's header.
pub(crate) struct LeverNames {
    pub id_suffix: &'static str,
    pub label_suffix: &'static str,
    pub header_suffix: &'static str,
}

fn label(job: &Job) -> String {
    let mode = match &job.mode {
        Mode::Full => "full FT".to_owned(),
        Mode::Lora(l) => format!("LoRA r={}", l.r),
        Mode::Qlora(l) => format!("QLoRA r={}", l.r),
    };
    let device = match (job.hardware.kind, job.gpus) {
        (Kind::Cpu, 1) => "1 rank".to_owned(),
        (Kind::Cpu, n) => format!("{n} ranks"),
        (Kind::Gpu, 1) => "1 GPU".to_owned(),
        (Kind::Gpu, n) => format!("{n} GPUs"),
    };
    let zero3 = if job.gpus > 1 { "ZeRO-3 " } else { "" };
    let levers = Levers::of(job).names().label_suffix;
    format!("{zero3}{mode}{levers}, {device}")
}
