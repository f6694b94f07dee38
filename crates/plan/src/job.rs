//! The question a plan answers: which model, trained how, on what, with how much data, and the
//! assumptions the answer rests on.

use serde::Serialize;
use shard_model::{LoraConfig, MistralConfig};

use crate::{Dtype, Hardware, Kind, PlanError};

/// What is trained.
#[derive(Debug, Clone, PartialEq)]
pub enum Mode {
    /// Every parameter, with AdamW states (ZeRO-3 sharded when on several ranks).
    Full,
    /// LoRA adapters on a frozen base in the compute dtype.
    Lora(LoraConfig),
    /// LoRA adapters on a frozen base whose projections are stored in NF4 (QLoRA).
    Qlora(LoraConfig),
}

impl Mode {
    pub fn lora(&self) -> Option<&LoraConfig> {
        match self {
            Mode::Full => None,
            Mode::Lora(l) | Mode::Qlora(l) => Some(l),
        }
    }

    pub fn label(&self) -> String {
        match self {
            Mode::Full => "full fine-tuning".into(),
            Mode::Lora(l) => format!("LoRA r={} on {}", l.r, l.targets.join(",")),
            Mode::Qlora(l) => format!("QLoRA r={} on {} (NF4 base)", l.r, l.targets.join(",")),
        }
    }
}

/// How the trained parameters' Adam states are held (`train.optimizer`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Optimizer {
    /// f32 m and v: 8 bytes per trained parameter.
    #[default]
    AdamW,
    /// bitsandbytes' AdamW8bit: 8-bit m and v (2 bytes per parameter) with an f32 absmax of each
    /// per block of 256 elements; tensors under 4,096 elements keep f32 states.
    AdamW8bit,
}

/// What the answer assumes rather than knows; each is printed with the plan.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Assumptions {
    /// Model FLOP utilisation: the fraction of the peak FLOP/s the step achieves.
    pub mfu: f64,
    /// The fraction of the memory limit kept free: a plan fits if its total <= (1 - margin) x limit.
    pub margin: f64,
    /// The next unit is all-gathered while this one computes, as the engine does (on the CPU
    /// through a communication thread), so two units are gathered at once.
    pub prefetch: bool,
    /// A fused (FlashAttention-2) kernel that keeps no [batch, heads, seq, seq] scores, only each
    /// query's log-sum-exp: the engine's default (`runtime.attention = "fused"`); false plans the
    /// eager attention.
    pub fused_attention: bool,
}

impl Assumptions {
    /// The defaults for a kind of device (the same for both today).
    pub fn for_kind(_kind: Kind) -> Self {
        Self { mfu: 0.4, margin: 0.05, prefetch: true, fused_attention: true }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    pub model: MistralConfig,
    pub mode: Mode,
    pub optimizer: Optimizer,
    /// `runtime.offload = "optimizer"`: master, Adam states and gradient shards in host memory,
    /// the AdamW step on the host (see `offload`).
    pub offload: bool,
    pub hardware: Hardware,
    /// The compute dtype.
    pub precision: Dtype,
    /// The dtype gradients are reduce-scattered in (f32 unless the run asks for bf16).
    pub reduce: Dtype,
    /// Ranks (one per GPU, or per CPU slot).
    pub gpus: usize,
    /// Ranks a node holds (a job of fewer ranks sits on one node).
    pub gpus_per_node: usize,
    /// Sequences per rank per micro-batch.
    pub micro_batch: usize,
    pub grad_accum: usize,
    /// Tokens per sequence (every sequence is assumed this long).
    pub seq_len: usize,
    /// Sequences the whole run trains on (examples x epochs), when known.
    pub sequences: Option<f64>,
    /// Memory each rank may use; `None`: fit not judged.
    pub memory_limit: Option<u64>,
    pub price_per_gpu_hour: Option<f64>,
    pub assumptions: Assumptions,
}

impl Job {
    /// Full fine-tuning of `model` on `gpus` A100 80GB GPUs (8 per node), micro-batch 1 of 1,024
    /// tokens, in bf16: the quick question's defaults, before flags change them.
    pub fn new(model: MistralConfig, gpus: usize) -> Self {
        let hardware = Hardware::preset("a100-80gb").expect("a preset");
        Job {
            model,
            mode: Mode::Full,
            optimizer: Optimizer::AdamW,
            offload: false,
            memory_limit: None,
            precision: Dtype::Bf16,
            reduce: Dtype::F32,
            assumptions: Assumptions::for_kind(hardware.kind),
            hardware,
            gpus,
            gpus_per_node: 8,
            micro_batch: 1,
            grad_accum: 1,
            seq_len: 1024,
            sequences: None,
            price_per_gpu_hour: None,
        }
    }

    /// Runs the job on `hardware`; moving between CPU and GPU also takes that kind's compute dtype
    /// (f32 on the CPU, bf16 on GPUs) and assumptions.
    pub fn set_hardware(&mut self, hardware: Hardware) {
        if hardware.kind != self.hardware.kind {
            self.precision = if hardware.kind == Kind::Cpu { Dtype::F32 } else { Dtype::Bf16 };
            self.assumptions = Assumptions::for_kind(hardware.kind);
        }
        self.hardware = hardware;
    }

    pub fn nodes(&self) -> usize {
        self.gpus.div_ceil(self.gpus_per_node)
    }

    /// Tokens each rank processes per micro-batch.
    pub fn tokens_per_micro_batch(&self) -> u64 {
        (self.micro_batch * self.seq_len) as u64
    }

    /// Refuses what the planner cannot model, saying why.
    pub fn check(&self) -> Result<(), PlanError> {
        let unsupported = |what: &str, why: &str| Err(PlanError::Unsupported { what: what.into(), why: why.into() });
        if self.seq_len < 2 {
            return unsupported("sequences shorter than 2 tokens", "a token needs a next token to predict");
        }
        for (what, value) in [
            ("ranks", self.gpus),
            ("ranks per node", self.gpus_per_node),
            ("micro-batch", self.micro_batch),
            ("gradient accumulation", self.grad_accum),
        ] {
            if value == 0 {
                return unsupported(&format!("{what} = 0"), "it must be at least 1");
            }
        }
        if self.mode.lora().is_some_and(|l| l.r == 0 || l.targeted().next().is_none()) {
            return unsupported("LoRA without adapters", "needs r >= 1 and at least one target projection");
        }
        let a = &self.assumptions;
        if !(a.mfu > 0.0 && a.mfu <= 1.0) {
            return unsupported(&format!("an MFU of {}", a.mfu), "it must lie in (0, 1]");
        }
        if !(0.0..1.0).contains(&a.margin) {
            return unsupported(&format!("a margin of {}", a.margin), "it must lie in [0, 1)");
        }
        Ok(())
    }
}
