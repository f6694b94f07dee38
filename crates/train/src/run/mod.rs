//! The training run itself: the engine's set-up, the trainer and its step loop, eval, and the
//! checks made on each step's numbers.

pub mod engine_setup;
pub mod evaluator;
pub mod finite_params;
pub mod nf4_base;
pub mod nonfinite;
pub mod settings;
pub mod shard_groups;
pub mod train;
pub mod trainer;
