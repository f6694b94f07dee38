//! The vocabulary the crates share, defined once: the float dtypes a run computes and reduces in,
//! how attention is computed, the kinds of learning-rate schedule, the label that carries no
//! loss, and how a count is printed. The run config reads straight into these types (their serde names are the config's
//! values); the planner, the data pipeline, the model and the engine use them as they are.
//!
//! Without the `burn` feature this crate is plain Rust and serde.

use serde::{Deserialize, Serialize};

/// `n` and `noun`, plural unless `n` is 1: "1 example", "4 examples".
pub fn counted<N: std::fmt::Display + PartialEq + From<u8>>(n: N, noun: &str) -> String {
    if n == N::from(1) { format!("1 {noun}") } else { format!("{n} {noun}s") }
}

/// Labels that carry no loss (Hugging Face's convention: `-100`, and labels are not shifted).
pub const IGNORE_INDEX: i64 = -100;

/// A floating-point dtype: what the model computes in (`model.dtype`), or what gradients are
/// reduce-scattered in (`runtime.reduce_dtype`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Dtype {
    #[default]
    F32,
    Bf16,
}

impl Dtype {
    /// Bytes per element.
    pub fn bytes(self) -> usize {
        match self {
            Dtype::F32 => 4,
            Dtype::Bf16 => 2,
        }
    }

    /// Burn's name for it.
    #[cfg(feature = "burn")]
    pub fn dtype(self) -> burn::tensor::DType {
        match self {
            Dtype::F32 => burn::tensor::DType::F32,
            Dtype::Bf16 => burn::tensor::DType::BF16,
        }
    }
}

/// How the model's attention is computed (`runtime.attention`): fused (FlashAttention-2: memory
/// that grows with the sequence, not its square) or eager (the [seq, seq] scores materialised, as
/// transformers' eager implementation; the reference to compare with).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AttentionPath {
    #[default]
    Fused,
    Eager,
}

/// The shape of the learning rate over a run (`train.lr_schedule`), after its warm-up: HF's
/// `get_{constant,linear,cosine}_schedule_with_warmup`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ScheduleKind {
    Constant,
    Linear,
    Cosine,
}

impl ScheduleKind {
    /// The run config's name for it.
    pub fn name(self) -> &'static str {
        match self {
            ScheduleKind::Constant => "constant",
            ScheduleKind::Linear => "linear",
            ScheduleKind::Cosine => "cosine",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_is_singular() {
        assert_eq!(
            (counted(1u64, "example"), counted(0usize, "rank"), counted(12u32, "step")),
            ("1 example".into(), "0 ranks".into(), "12 steps".into())
        );
    }

    #[derive(Debug, Deserialize, Serialize, PartialEq)]
    struct Config {
        dtype: Dtype,
        schedule: ScheduleKind,
    }

    /// The run config's spellings read into the types and are written back the same.
    #[test]
    fn config_values_round_trip() {
        let config: Config = toml::from_str("dtype = \"bf16\"\nschedule = \"cosine\"").unwrap();
        assert_eq!(config, Config { dtype: Dtype::Bf16, schedule: ScheduleKind::Cosine });
        assert_eq!(toml::to_string(&config).unwrap(), "dtype = \"bf16\"\nschedule = \"cosine\"\n");
        assert_eq!(ScheduleKind::Cosine.name(), "cosine");
        assert_eq!((Dtype::F32.bytes(), Dtype::Bf16.bytes()), (4, 2));
    }
}
