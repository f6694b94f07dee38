//! `--fit`: the smallest number of GPUs on which the job fits, then the largest micro-batch
//! that still fits on that many. Where full fine-tuning as asked does not fit a number of GPUs,
//! the levers for fewer GPUs are tried on it (AdamW8bit, offload, both: `compare::LEVERS`); the
//! plan's label and strategy say which one it chose.

use crate::compare::LEVERS;
use crate::{Job, Mode, Optimizer, Plan, PlanError, plan};

/// Searched up to this many GPUs.
const MAX_GPUS: usize = 4096;
/// And up to this many sequences per micro-batch.
const MAX_MICRO_BATCH: usize = 1 << 16;

pub fn fit(job: &Job) -> Result<Plan, PlanError> {
    let Some(limit) = job.memory_limit else {
        return Err(PlanError::NoFit("there is no memory limit to fit in: give --gpu or --gpu-memory".into()));
    };
    let fits_as = |job: &Job, gpus: usize, micro_batch: usize| -> Result<Option<Plan>, PlanError> {
        let p = plan(&Job { gpus, micro_batch, ..job.clone() })?;
        Ok(p.fits.unwrap_or(false).then_some(p))
    };
    // The job as asked, else with the first lever that fits on `gpus`.
    let pulls_no_lever = job.optimizer == Optimizer::AdamW && !job.offload;
    let levers = LEVERS.iter().filter(|_| job.mode == Mode::Full && pulls_no_lever).map(|&(optimizer, offload)| Job {
        optimizer,
        offload,
        ..job.clone()
    });
    let candidates: Vec<Job> = std::iter::once(job.clone()).chain(levers).collect();
    let first_fitting = |gpus: usize| -> Result<Option<Job>, PlanError> {
        for candidate in &candidates {
            if fits_as(candidate, gpus, candidate.micro_batch)?.is_some() {
                return Ok(Some(candidate.clone()));
            }
        }
        Ok(None)
    };
    let mut gpus = 1;
    let job = loop {
        if let Some(found) = first_fitting(gpus)? {
            break found;
        }
        if gpus == MAX_GPUS {
            let p = plan(&Job { gpus, ..job.clone() })?;
            let b = &p.per_rank_bytes;
            return Err(PlanError::NoFit(format!(
                "micro-batch {} does not fit in {} on up to {MAX_GPUS} GPUs: even there a rank needs {} \
                 (of which activations {}, logits {}, gathered units {}); lower --micro-batch or --seq-len",
                job.micro_batch,
                crate::human(limit),
                crate::human(b.total),
                crate::human(b.activations),
                crate::human(b.logits),
                crate::human(b.gathered),
            )));
        }
        gpus += 1;
    };
    let fits = |gpus: usize, micro_batch: usize| fits_as(&job, gpus, micro_batch);
    // Largest micro-batch on `gpus`: double while it fits, then bisect.
    let (mut good, mut bad) = (job.micro_batch, job.micro_batch * 2);
    while bad <= MAX_MICRO_BATCH && fits(gpus, bad)?.is_some() {
        good = bad;
        bad *= 2;
    }
    bad = bad.min(MAX_MICRO_BATCH + 1);
    while bad - good > 1 {
        let mid = (good + bad) / 2;
        if fits(gpus, mid)?.is_some() { good = mid } else { bad = mid }
    }
    Ok(fits(gpus, good)?.expect("checked above"))
}
