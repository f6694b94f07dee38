//! The run's examples: the training and eval sets, and a row as `data preview` shows it.

pub mod preview;
pub mod run_data;
