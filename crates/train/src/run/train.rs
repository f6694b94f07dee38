//! The run: one rank's part of a training run, from its run config to the export at the end.
//! Every rank builds its shards, then trains the configured steps (or epochs), evaluating every
//! `eval.every` steps and at the end, saving every `output.save_every` steps, at the end and when
//! asked to stop; rank 0 reports progress, writes metrics.jsonl, the charts and the final export.

use std::path::PathBuf;

use anyhow::Result;
use burn::tensor::backend::AutodiffBackend;
use shard_comm::{Collective, Phase};

use crate::config::run_config::RunConfig;
use crate::job::interrupt::Interrupt;
use crate::metrics::device_memory::DeviceMemoryProbe;
use crate::metrics::progress::ProgressMode;
use crate::run::trainer::Trainer;

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
    /// `--progress`: a bar or a line per step.
    pub progress: ProgressMode,
}

impl RunOptions {
    pub(crate) fn set_phase(&self, phase: &str, training: bool) {
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
    shard_kernels::allow_tf32(run.runtime.tf32);
    match Trainer::<B, C>::new(run, options, comm, device)? {
        Some(trainer) => trainer.run(),
        None => Ok(()), // the run was complete already
    }
}
