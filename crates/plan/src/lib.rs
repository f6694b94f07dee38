//! The planner: before a run starts, the memory each rank needs by category, the run's time and
//! its cost, from the model's config.json and the run's shape alone. Pure arithmetic on shapes:
//! it loads no weights and does not depend on Burn.

mod activations;
mod compare;
pub mod deepspeed;
mod fit;
mod fraction;
mod hardware;
mod job;
mod memory;
mod plan;
mod render;
mod size;
mod time;
mod units;
mod values;

pub use compare::compare;
pub use fit::fit;
pub use fraction::{FractionError, parse_fraction};
pub use hardware::{Hardware, Kind, preset_names};
pub use job::{Assumptions, Job, Mode};
pub use memory::{CPU_PROCESS_BYTES, PerRank};
pub use plan::{Plan, plan};
pub use render::{architecture, architecture_json, compare_table, json, table};
pub use shard_core::Dtype;
pub use size::{SizeError, human, parse_size};
pub use time::Time;
pub use values::{parse_count, parse_gpu, parse_positive, parse_projection};

/// Why a plan cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("cannot plan {what}: {why}")]
    Unsupported { what: String, why: String },
    #[error("{0}")]
    NoFit(String),
}

/// 7241732096 -> "7,241,732,096"
pub fn group_digits(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}
