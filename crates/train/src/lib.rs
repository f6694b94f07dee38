//! The trainer: a run config turned into one rank's part of a training run (engine set-up, the
//! step loop, eval, metrics, charts, saves, stopping on request) and its exports, generic over
//! the backend and the collective. It parses no command line and picks no backend: that is the
//! binary's job.

pub mod config;
pub mod data;
pub mod job;
pub mod metrics;
pub mod run;
pub mod saves;
pub mod system;
