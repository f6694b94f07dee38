//! The backend is chosen here, at the binary's edge: burn-flex on CPU, burn-cuda (feature
//! `cuda`) on GPU, one GPU per local rank. Everything below is generic.

use anyhow::Result;
use burn::backend::{Autodiff, Flex};
use shard_comm::{MpiCollective, Watched};

use shard_train_core::config::run_config::{Device, RunConfig};
use shard_train_core::run::train::{RunOptions, train};

pub fn train_on_device(run: &RunConfig, options: &RunOptions, comm: Watched<MpiCollective>) -> Result<()> {
    match run.runtime.device {
        Device::Cpu => train::<Autodiff<Flex>, _>(run, options, comm, Default::default(), None),
        #[cfg(feature = "cuda")]
        Device::Cuda => train_on_cuda(run, options, comm),
        #[cfg(not(feature = "cuda"))]
        Device::Cuda => unreachable!("check_node refuses runtime.device = \"cuda\" in a build without CUDA"),
    }
}

/// Each rank binds its GPU (checked by `check_node`); every collective goes over NCCL, world 1's too.
#[cfg(feature = "cuda")]
fn train_on_cuda(run: &RunConfig, options: &RunOptions, comm: Watched<MpiCollective>) -> Result<()> {
    use burn::backend::{Cuda, cuda::CudaDevice};
    let world = *shard_comm::Collective::<Flex>::world(&comm);
    // Before anything reads cubecl's config.
    shard_train_core::system::kernel_cache::configure(world.is_main());
    let gpu = shard_train_core::system::cuda_check::gpu_of_this_rank(&world)?;
    if world.is_main() {
        println!("collectives: NCCL {} on the GPUs (one per rank)", shard_comm::NcclCollective::version().unwrap_or_default());
    }
    let timeout = std::time::Duration::from_secs(run.runtime.timeout_s);
    let nccl = comm.try_map(|mpi| shard_comm::NcclCollective::new(mpi, gpu, timeout))?;
    let device_memory = shard_train_core::metrics::device_memory::cuda_probe(gpu)?;
    train::<Autodiff<Cuda<f32, i32>>, _>(run, options, nccl, CudaDevice::new(gpu), Some(device_memory))
}
