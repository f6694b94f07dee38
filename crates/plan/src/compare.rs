//! `--compare`: the same job under the strategies people weigh against each other.

use shard_model::LoraConfig;

use crate::{Dtype, Job, Kind, Mode, Optimizer, Plan, PlanError, plan};

/// The levers for fewer or smaller GPUs, in the order `--compare` shows them and `--fit` tries
/// them: AdamW8bit (no time lost), optimizer offload (PCIe and the host step each step), both.
pub const LEVERS: [(Optimizer, bool); 3] = [(Optimizer::AdamW8bit, false), (Optimizer::AdamW, true), (Optimizer::AdamW8bit, true)];

/// Full fine-tuning on one GPU; ZeRO-3 full fine-tuning on 2, 4, 8 and `job.gpus`; LoRA with
/// `lora` on one GPU and on `job.gpus`; QLoRA on one GPU (GPUs only: the CPU engine has no NF4);
/// on GPUs, full fine-tuning on 1, 2 and 4 with AdamW8bit, with optimizer offload, and with both.
pub fn compare(job: &Job, lora: &LoraConfig) -> Result<Vec<Plan>, PlanError> {
    let job = &Job { optimizer: Optimizer::AdamW, offload: false, ..job.clone() };
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
        // The levers for fewer or smaller GPUs.
        for (optimizer, offload) in LEVERS {
            for gpus in [1, 2, 4] {
                jobs.push(Job { mode: Mode::Full, gpus, optimizer, offload, ..job.clone() });
            }
        }
    }
    jobs.iter().map(plan).collect()
}
