//! The backend is chosen here, at the binary's edge: burn-flex on CPU, burn-cuda (feature
//! `cuda`) on GPU, one GPU per local rank. Everything below is generic.

use anyhow::Result;
use burn::backend::{Autodiff, Flex};
use shard_comm::{MpiCollective, Watched};

use shard_train_core::run_config::{Device, RunConfig};
use shard_train_core::train::{RunOptions, train};

pub fn train_on_device(run: &RunConfig, options: &RunOptions, comm: Watched<MpiCollective>) -> Result<()> {
    match run.runtime.device {
        Device::Cpu => train::<Autodiff<Flex>, _>(run, options, comm, Default::default()),
        Device::Cuda => train_on_cuda(run, options, comm),
    }
}

#[cfg(feature = "cuda")]
fn train_on_cuda(run: &RunConfig, options: &RunOptions, comm: Watched<MpiCollective>) -> Result<()> {
    use burn::backend::Cuda;
    use burn::backend::cuda::CudaDevice;
    // SAFETY: only probes whether the CUDA driver library can be loaded.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        anyhow::bail!("runtime.device = \"cuda\", but the CUDA driver library (libcuda.so) cannot be loaded on this machine");
    }
    let device = CudaDevice::new(shard_train_core::topology::gpu_of_local_rank(comm.world().local_rank, std::env::var("CUDA_VISIBLE_DEVICES").ok().as_deref())?);
    train::<Autodiff<Cuda<f32, i32>>, _>(run, options, comm, device)
}

#[cfg(not(feature = "cuda"))]
fn train_on_cuda(_run: &RunConfig, _options: &RunOptions, _comm: Watched<MpiCollective>) -> Result<()> {
    anyhow::bail!("runtime.device = \"cuda\" needs a binary built with `cargo build --release --features cuda`")
}
