//! The backend is chosen here, at the binary's edge: burn-flex on CPU, burn-cuda (feature
//! `cuda`) on NVIDIA GPUs, one GPU per local rank, burn-wgpu (feature `wgpu`) on Vulkan or Metal
//! devices. Everything below is generic.

use anyhow::Result;
use burn::backend::{Autodiff, Flex};
use shard_comm::{MpiCollective, Watched};

use shard_train_core::config::run_config::{Device, RunConfig};
use shard_train_core::run::train::{RunOptions, TrainDevice, train};

pub fn train_on_device(run: &RunConfig, options: &RunOptions, comm: Watched<MpiCollective>) -> Result<()> {
    match run.runtime.device {
        Device::Cpu => {
            train::<Autodiff<Flex>, _>(run, options, comm, TrainDevice { handle: Default::default(), memory: None, host_cpu: true })
        }
        #[cfg(feature = "cuda")]
        Device::Cuda => train_on_cuda(run, options, comm),
        #[cfg(not(feature = "cuda"))]
        Device::Cuda => unreachable!("check_node refuses runtime.device = \"cuda\" in a build without CUDA"),
        #[cfg(feature = "wgpu")]
        Device::Wgpu => train_on_wgpu(run, options, comm),
        #[cfg(not(feature = "wgpu"))]
        Device::Wgpu => unreachable!("check_node refuses runtime.device = \"wgpu\" in a build without wgpu"),
    }
}

/// Each rank binds its GPU (checked by `check_node`); every collective goes over NCCL, world 1's
/// too, unless `runtime.collectives = "mpi"` moves them through host buffers.
#[cfg(feature = "cuda")]
fn train_on_cuda(run: &RunConfig, options: &RunOptions, comm: Watched<MpiCollective>) -> Result<()> {
    use burn::backend::{Cuda, cuda::CudaDevice};
    use shard_train_core::config::run_config::Collectives;
    let world = *shard_comm::Collective::<Flex>::world(&comm);
    // Before anything reads cubecl's config.
    shard_train_core::system::kernel_cache::configure(world.is_main());
    let gpu = shard_train_core::system::cuda_check::gpu_of_this_rank(&world)?;
    let memory = shard_train_core::metrics::device_memory::cuda_probe(gpu)?;
    let device = TrainDevice { handle: CudaDevice::new(gpu), memory: Some(memory), host_cpu: false };
    match run.collectives() {
        Collectives::Nccl => {
            if world.is_main() {
                println!("collectives: NCCL {} on the GPUs (one per rank)", shard_comm::NcclCollective::version().unwrap_or_default());
            }
            let timeout = std::time::Duration::from_secs(run.runtime.timeout_s);
            let nccl = comm.try_map(|mpi| shard_comm::NcclCollective::new(mpi, gpu, timeout))?;
            train::<Autodiff<Cuda<f32, i32>>, _>(run, options, nccl, device)
        }
        Collectives::Mpi => {
            if world.is_main() {
                println!("collectives: MPI through host buffers (runtime.collectives = \"mpi\")");
            }
            train::<Autodiff<Cuda<f32, i32>>, _>(run, options, comm, device)
        }
    }
}

/// Every rank on the default adapter (the first GPU, else a software one such as lavapipe), f32
/// only; collectives over MPI through host buffers.
#[cfg(feature = "wgpu")]
fn train_on_wgpu(run: &RunConfig, options: &RunOptions, comm: Watched<MpiCollective>) -> Result<()> {
    use burn::backend::Wgpu;
    use burn::backend::wgpu::{WgpuDevice, graphics::AutoGraphicsApi, init_setup};
    let world = *shard_comm::Collective::<Flex>::world(&comm);
    let handle = WgpuDevice::DefaultDevice;
    // The device's first use (it fixes the graphics API); it panics when there is no adapter.
    let setup = std::panic::catch_unwind(|| init_setup::<AutoGraphicsApi>(&handle, Default::default())).map_err(|_| {
        anyhow::anyhow!(
            "runtime.device = \"wgpu\" found no Vulkan (or Metal) device: install the GPU's Vulkan driver, or Mesa's software one \
             (Debian: `apt-get install mesa-vulkan-drivers libvulkan1`); `vulkaninfo --summary` lists what Vulkan sees"
        )
    })?;
    let adapter = setup.adapter.get_info();
    if world.is_main() {
        println!(
            "device: wgpu on {} ({:?}, {:?}), f32; collectives: MPI through host buffers",
            adapter.name, adapter.backend, adapter.device_type
        );
    }
    let memory = shard_train_core::metrics::device_memory::wgpu_probe(handle.clone());
    let device = TrainDevice { handle, memory: Some(memory), host_cpu: adapter.device_type == wgpu::DeviceType::Cpu };
    train::<Autodiff<Wgpu>, _>(run, options, comm, device)
}
