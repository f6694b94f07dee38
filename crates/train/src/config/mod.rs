//! What the run is told: the run config, its record in the output directory, and its plan.

pub mod plan;
pub mod record;
pub mod run_config;
