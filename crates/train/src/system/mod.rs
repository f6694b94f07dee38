//! The machine the rank runs on: threads and memory, nodes and GPUs, the CUDA check, kernel cache
//! and the device syncs that report failed kernels.

pub mod cuda_check;
pub mod device_sync;
pub mod kernel_cache;
pub mod threads;
pub mod topology;
