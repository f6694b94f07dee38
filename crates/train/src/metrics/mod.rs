//! What the run reports: metrics.jsonl and progress, TensorBoard events, loss charts, device memory.

pub mod chart;
pub mod device_memory;
pub mod log;
pub mod memory_peaks;
pub mod progress;
pub mod run_chart;
pub mod tensorboard;
