//! `[model]`: the checkpoint to train, or a config to initialise at random, and the compute dtype.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use shard_core::Dtype;

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
    pub dtype: Option<Dtype>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelInit {
    Random,
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
