//! What the run config becomes for the engine, the saves and the export.

use burn::tensor::backend::Backend;
use shard_checkpoint::{DEFAULT_MAX_SHARD_BYTES, ScheduleState};
use shard_core::{AttentionPath, Dtype};
use shard_model::{LoraConfig, MistralConfig};
use shard_zero::{AdamW, LrSchedule, MixedPrecision, TrainSettings};

use crate::config::run_config::{ExportFormat, Offload, RunConfig};
use crate::saves::export::{ExportTarget, model_dtype};

/// What the end of the run exports, as `output.export` says.
pub fn export_target(run: &RunConfig, model: &MistralConfig) -> Option<ExportTarget> {
    match run.output.export {
        ExportFormat::None => None,
        ExportFormat::Peft => Some(ExportTarget::Peft),
        ExportFormat::Hf => Some(ExportTarget::Hf { dtype: model_dtype(model), max_shard_bytes: DEFAULT_MAX_SHARD_BYTES }),
    }
}

/// The schedule as the run config states it, for the save (a resume compares it).
pub fn schedule_state(run: &RunConfig, total_steps: u64) -> ScheduleState {
    let t = &run.train;
    ScheduleState { kind: t.lr_schedule.name().into(), lr: t.lr, warmup_steps: t.warmup_steps, total_steps }
}

/// The adapters to train in LoRA and QLoRA modes.
pub fn lora_config(run: &RunConfig) -> Option<LoraConfig> {
    run.train.mode.trains_adapters().then(|| run.lora.config())
}

/// In an f32 run, what its matmuls compute in on backend B: "IEEE", or "TF32" where
/// `runtime.tf32` lets a cubecl backend use tensor cores (read after `shard_kernels::allow_tf32`);
/// none in a bf16 run.
pub fn f32_matmul<B: Backend>(run: &RunConfig) -> Option<&'static str> {
    (run.compute_dtype() == Dtype::F32).then(shard_kernels::f32_matmul_name::<B>)
}

/// runtime.attention, unless the fused kernels would stop short at data.seq_len on a software
/// Vulkan driver (burn-wgpu on lavapipe: `host_cpu` on a cubecl backend), whose shader loops end
/// at a limit: the run then attends eagerly, and the main rank says so.
pub fn attention_path<B: Backend>(run: &RunConfig, model: &MistralConfig, host_cpu: bool, main: bool) -> AttentionPath {
    let (seq, heads, kv_heads) = (run.data.seq_len, model.num_attention_heads, model.num_key_value_heads);
    if run.runtime.attention == AttentionPath::Fused
        && !shard_kernels::fused_attention_fits::<B>(seq, heads, kv_heads, model.head_dim, host_cpu)
    {
        if main {
            println!(
                "attention: eager, not fused: at data.seq_len = {seq} the fused kernels would run past the loop limit of this \
                 software Vulkan driver (Mesa's lavapipe) and leave gradients unwritten (docs/attention.md)"
            );
        }
        return AttentionPath::Eager;
    }
    run.runtime.attention
}

pub fn train_settings(run: &RunConfig, total_steps: u64, attention: AttentionPath) -> TrainSettings {
    let t = &run.train;
    TrainSettings {
        optimizer: AdamW { betas: t.betas, eps: t.eps, weight_decay: t.weight_decay },
        optimizer_kind: t.optimizer.kind(),
        offload: run.runtime.offload == Offload::Optimizer,
        schedule: LrSchedule { kind: t.lr_schedule, lr: t.lr, warmup_steps: t.warmup_steps, total_steps },
        max_grad_norm: t.max_grad_norm,
        seed: t.seed,
        precision: MixedPrecision { compute: run.compute_dtype(), reduce: run.runtime.reduce_dtype },
        attention,
    }
}
