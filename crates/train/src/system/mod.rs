//! The machine the rank runs on: threads and memory, nodes and GPUs, the CUDA check and kernel cache.

pub mod cuda_check;
pub mod kernel_cache;
pub mod threads;
pub mod topology;
