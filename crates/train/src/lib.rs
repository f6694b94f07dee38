//! The trainer: a run config turned into one rank's part of a training run (engine set-up, the
//! step loop, eval, metrics, charts, saves, stopping on request) and its exports, generic over
//! the backend and the collective. It parses no command line and picks no backend: that is the
//! binary's job.

pub mod chart;
pub mod cuda_check;
pub mod device_memory;
pub mod device_sync;
pub mod engine_setup;
pub mod error_text;
pub mod export;
pub mod export_save;
pub mod fault_injection;
pub mod finite_params;
pub mod interrupt;
pub mod job_end;
pub mod kernel_cache;
pub mod metrics;
pub mod nf4_base;
pub mod nonfinite;
pub mod output_dir;
pub mod plan;
pub mod preview;
pub mod progress;
pub mod quantize;
pub mod record;
pub mod run_config;
pub mod run_data;
pub mod save;
pub mod shard_groups;
pub mod shared_dir;
pub mod startup_deadline;
pub mod tensorboard;
pub mod threads;
pub mod topology;
pub mod train;
