//! `[model]`: the checkpoint to train, or a config to initialise at random, and the compute dtype.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::invalid::{Check, invalid, not_a_file};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    /// A Hugging Face checkpoint directory (config.json + safetensors).
    pub path: Option<PathBuf>,
    /// `"random"`: no checkpoint, HF's initialisation from `config`.
    pub init: Option<ModelInit>,
    /// A config.json, for `init = "random"`.
    pub config: Option<PathBuf>,
    /// What the model computes in; by default f32 on the CPU, bf16 on GPUs (see `compute_dtype`).
    pub dtype: Option<ComputeDtype>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelInit {
    Random,
}

/// A float dtype of the run config: `model.dtype`, `runtime.reduce_dtype`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ComputeDtype {
    #[default]
    F32,
    Bf16,
}

impl ComputeDtype {
    /// The engine's name for it.
    pub fn float(self) -> shard_zero::Float {
        match self {
            Self::F32 => shard_zero::Float::F32,
            Self::Bf16 => shard_zero::Float::Bf16,
        }
    }

    /// The planner's name for it.
    pub fn precision(self) -> shard_plan::Precision {
        match self {
            Self::F32 => shard_plan::Precision::F32,
            Self::Bf16 => shard_plan::Precision::Bf16,
        }
    }
}

impl ModelSection {
    pub(super) fn validate(&self) -> Check {
        match (&self.path, self.init, &self.config) {
            (Some(_), None, None) | (None, Some(ModelInit::Random), Some(_)) => Ok(()),
            (None, Some(ModelInit::Random), None) => invalid("model.config", "is needed with init = \"random\" (a config.json)"),
            _ => invalid("model", "needs either `path` (a checkpoint directory) or `init = \"random\"` with `config`"),
        }
    }

    /// The checkpoint directory or the config.json exists.
    pub(super) fn check_runnable(&self) -> Check {
        match (&self.path, &self.config) {
            (Some(dir), _) if !dir.is_dir() => {
                let why = if dir.exists() { "a file, expected a checkpoint directory" } else { "no such directory" };
                invalid("model.path", format!("= {}: {why}", dir.display()))
            }
            (None, Some(config)) if !config.is_file() => invalid("model.config", not_a_file(config)),
            _ => Ok(()),
        }
    }
}
