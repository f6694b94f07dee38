//! `--compare`: the same job under the strategies people weigh against each other.

use shard_model::LoraConfig;

use crate::{Dtype, Job, Kind, Mode, Plan, PlanError, plan};

/// Full fine-tuning on one GPU; ZeRO-3 full fine-tuning on 2, 4, 8 and `job.gpus`; LoRA with
/// `lora` on one GPU and on `job.gpus`; QLoRA on one GPU (GPUs only: the CPU engine has no NF4).
pub fn compare(job: &Job, lora: &LoraConfig) -> Result<Vec<Plan>, PlanError> {
    let mut world_sizes = vec![1, 2, 4, 8, job.gpus];
    world_sizes.sort_unstable();
    world_sizes.dedup();
    let mut jobs: Vec<Job> = world_sizes.iter().map(|&gpus| Job { mode: Mode::Full, gpus, ..job.clone() }).collect();
    jobs.push(Job { mode: Mode::Lora(lora.clone()), gpus: 1, ..job.clone() });
    if job.gpus > 1 {
        jobs.push(Job { mode: Mode::Lora(lora.clone()), ..job.clone() });
    }
    if job.hardware.kind == Kind::Gpu {
        jobs.push(Job { mode: Mode::Qlora(lora.clone()), gpus: 1, precision: Dtype::Bf16, ..job.clone() });
    }
    jobs.iter().map(plan).collect()
}
