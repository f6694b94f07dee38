//! The training run itself: the engine's set-up, the step loop, and the checks made on each step's numbers.

pub mod engine_setup;
pub mod finite_params;
pub mod nf4_base;
pub mod nonfinite;
pub mod shard_groups;
pub mod train;
