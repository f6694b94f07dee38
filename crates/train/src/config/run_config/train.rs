//! `[train]`: what is trained, for how long, and the optimizer's settings.

use serde::{Deserialize, Serialize};
use shard_core::ScheduleKind;

use super::invalid::{Check, f32_is_finite, invalid};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainSection {
    pub mode: TrainMode,
    /// Optimizer steps; or `epochs`, not both (neither: [`DEFAULT_STEPS`]).
    pub steps: Option<u64>,
    /// Passes over the training examples, rounded up to whole steps.
    pub epochs: Option<f64>,
    pub micro_batch_size: usize,
    pub grad_accum: usize,
    pub lr: f64,
    pub lr_schedule: ScheduleKind,
    pub warmup_steps: u64,
    pub weight_decay: f64,
    pub betas: [f64; 2],
    pub eps: f64,
    /// 0 turns clipping off.
    pub max_grad_norm: f64,
    pub seed: u64,
    /// What a step with a non-finite loss or gradient norm does (never an update).
    pub on_nonfinite: OnNonFinite,
    /// With `on_nonfinite = "skip"`: this many skipped steps in a row end the run.
    pub max_nonfinite_skips: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnNonFinite {
    /// The run ends with an error naming the step; nothing of that step is saved.
    Error,
    /// The step is dropped (no update) and counted.
    Skip,
}

impl Default for TrainSection {
    fn default() -> Self {
        Self {
            mode: TrainMode::Full,
            steps: None,
            epochs: None,
            micro_batch_size: 1,
            grad_accum: 1,
            lr: 2e-5,
            lr_schedule: ScheduleKind::Constant,
            warmup_steps: 0,
            weight_decay: 0.0,
            betas: [0.9, 0.999],
            eps: 1e-8,
            max_grad_norm: 1.0,
            seed: 0,
            on_nonfinite: OnNonFinite::Error,
            max_nonfinite_skips: 5,
        }
    }
}

/// The run's length when it names neither `train.steps` nor `train.epochs`.
pub const DEFAULT_STEPS: u64 = 100;

impl TrainSection {
    /// The optimizer steps of the run, for `examples` training examples taken `examples_per_step`
    /// at a time: `steps`, or as many steps as `epochs` passes take, the last one rounded up.
    pub fn total_steps(&self, examples: usize, examples_per_step: u64) -> u64 {
        match (self.steps, self.epochs) {
            (Some(steps), _) => steps,
            (None, Some(epochs)) => ((epochs * examples as f64) / examples_per_step as f64).ceil().max(1.0) as u64,
            (None, None) => DEFAULT_STEPS,
        }
    }

    pub(super) fn validate(&self) -> Check {
        match (self.steps, self.epochs) {
            (Some(_), Some(_)) => return invalid("train.epochs", "and train.steps both set the run's length: give one of them"),
            (Some(0), None) => return invalid("train.steps", "must be at least 1"),
            (None, Some(epochs)) if !(epochs.is_finite() && epochs > 0.0) => {
                return invalid("train.epochs", format!("must be a number > 0, found {epochs}"));
            }
            _ => {}
        }
        if self.micro_batch_size == 0 {
            return invalid("train.micro_batch_size", "must be at least 1");
        }
        if self.grad_accum == 0 {
            return invalid("train.grad_accum", "must be at least 1");
        }
        self.validate_optimizer()?;
        if self.on_nonfinite == OnNonFinite::Skip && self.max_nonfinite_skips == 0 {
            return invalid("train.max_nonfinite_skips", "must be at least 1 with on_nonfinite = \"skip\"");
        }
        if let Some(steps) = self.steps.filter(|&steps| self.warmup_steps > steps) {
            return invalid("train.warmup_steps", format!("({}) is more than train.steps ({steps})", self.warmup_steps));
        }
        Ok(())
    }

    /// The optimizer's kernels take these as f32 (shard_zero::optimizer): each is checked as
    /// that f32, where a value finite in f64 (lr = 1e39) would overflow.
    fn validate_optimizer(&self) -> Check {
        if !(f32_is_finite(self.lr) && self.lr >= 0.0) {
            return invalid("train.lr", format!("must be a number >= 0 and finite as f32 (at most {:e}), found {:e}", f32::MAX, self.lr));
        }
        if self.betas.iter().any(|&b| !(0.0..1.0).contains(&b) || b as f32 >= 1.0) {
            return invalid(
                "train.betas",
                format!("must both lie in [0, 1), also as f32 (0.99999999 rounds to 1), found {:?}", self.betas),
            );
        }
        if !(self.eps > 0.0 && self.eps as f32 > 0.0 && f32_is_finite(self.eps)) {
            return invalid("train.eps", format!("must be > 0 and finite as f32 (at least {:e}), found {:e}", f32::from_bits(1), self.eps));
        }
        if !(self.weight_decay >= 0.0 && f32_is_finite(self.weight_decay) && f32_is_finite(self.lr * self.weight_decay)) {
            return invalid(
                "train.weight_decay",
                format!("must be >= 0 and finite as f32, also times train.lr ({:e}), found {:e}", self.lr, self.weight_decay),
            );
        }
        // Clipping multiplies by max_grad_norm / norm in f32: a positive value that is 0 as f32
        // would zero every update.
        let norm = self.max_grad_norm;
        if norm.is_nan() || norm < 0.0 || (norm > 0.0 && norm as f32 == 0.0) {
            return invalid(
                "train.max_grad_norm",
                format!("must be >= 0 (0 turns clipping off) and, when > 0, also > 0 as f32, found {norm}"),
            );
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TrainMode {
    Full,
    Lora,
    /// LoRA on a base whose decoder linears are NF4 (quantized at load as bitsandbytes does, or
    /// read pre-quantized) and dequantized as bitsandbytes does.
    Qlora,
}

impl TrainMode {
    /// Whether the run trains LoRA adapters (on a frozen base).
    pub fn trains_adapters(self) -> bool {
        matches!(self, Self::Lora | Self::Qlora)
    }
}
