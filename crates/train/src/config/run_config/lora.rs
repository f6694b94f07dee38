//! `[lora]`: the adapters of a LoRA or QLoRA run.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use shard_model::PROJECTIONS;

use super::invalid::{Check, f32_is_finite, invalid, not_a_file};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoraSection {
    pub r: usize,
    pub alpha: f64,
    pub dropout: f64,
    pub targets: Vec<String>,
    /// A peft `adapter_model.safetensors` to start from, instead of peft's default init.
    pub init: Option<PathBuf>,
}

impl LoraSection {
    /// The adapters these settings describe.
    pub fn config(&self) -> shard_model::LoraConfig {
        shard_model::LoraConfig { r: self.r, alpha: self.alpha, dropout: self.dropout, targets: self.targets.clone() }
    }

    pub(super) fn validate(&self) -> Check {
        if self.r == 0 {
            return invalid("lora.r", "must be at least 1");
        }
        // The adapters' scale alpha / r is applied as f32.
        let scale = self.alpha / self.r as f64;
        if !(self.alpha > 0.0 && f32_is_finite(scale) && scale as f32 > 0.0) {
            return invalid("lora.alpha", format!("must be a number > 0 with alpha / r finite and > 0 as f32, found {:e}", self.alpha));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return invalid("lora.dropout", format!("must lie in [0, 1), found {}", self.dropout));
        }
        if self.targets.is_empty() {
            return invalid("lora.targets", "is empty: name at least one projection");
        }
        for (i, target) in self.targets.iter().enumerate() {
            if !PROJECTIONS.contains(&target.as_str()) {
                return invalid(
                    "lora.targets",
                    format!("has {target:?}, which is not a projection of the model (expected some of {PROJECTIONS:?})"),
                );
            }
            if self.targets[..i].contains(target) {
                return invalid("lora.targets", format!("names {target:?} twice"));
            }
        }
        Ok(())
    }

    /// The adapters to start from exist.
    pub(super) fn check_runnable(&self) -> Check {
        match &self.init {
            Some(init) if !init.is_file() => invalid("lora.init", not_a_file(init)),
            _ => Ok(()),
        }
    }
}

impl Default for LoraSection {
    fn default() -> Self {
        Self { r: 16, alpha: 32.0, dropout: 0.0, targets: ["q_proj", "k_proj", "v_proj", "o_proj"].map(String::from).to_vec(), init: None }
    }
}
