//! The backend is chosen here, at the binary's edge: burn-flex on CPU, burn-cuda (feature
//! `cuda`) on GPU, one GPU per local rank. Everything below is generic.

use std::path::Path;

use anyhow::Result;
use burn::backend::{Autodiff, Flex};
use shard_comm::MpiCollective;

use shard_train_core::run_config::{Device, RunConfig};
use shard_train_core::train::train;

pub fn train_on_device(run: &RunConfig, resume: Option<&Path>, comm: MpiCollective) -> Result<()> {
    match run.runtime.device {
        Device::Cpu => train::<Autodiff<Flex>, _>(run, resume, comm, Default::default()),
        Device::Cuda => train_on_cuda(run, resume, comm),
    }
}

#[cfg(feature = "cuda")]
fn train_on_cuda(run: &RunConfig, resume: Option<&Path>, comm: MpiCollective) -> Result<()> {
    use burn::backend::Cuda;
    use burn::backend::cuda::CudaDevice;
    // SAFETY: only probes whether the CUDA driver library can be loaded.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        anyhow::bail!("runtime.device = \"cuda\", but the CUDA driver library (libcuda.so) cannot be loaded on this machine");
    }
    let visible = std::env::var("CUDA_VISIBLE_DEVICES").ok();
    let device = CudaDevice::new(gpu_of_local_rank(comm.world().local_rank, visible.as_deref())?);
    train::<Autodiff<Cuda<f32, i32>>, _>(run, resume, comm, device)
}

#[cfg(not(feature = "cuda"))]
fn train_on_cuda(_run: &RunConfig, _resume: Option<&Path>, _comm: MpiCollective) -> Result<()> {
    anyhow::bail!("runtime.device = \"cuda\" needs a binary built with `cargo build --release --features cuda`")
}

/// The GPU a rank drives, among those CUDA shows it: the one of its local rank, or the only one
/// when the launcher gave each rank a GPU of its own (`CUDA_VISIBLE_DEVICES` with one entry, as
/// SLURM's `--gpus-per-task=1` sets it).
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
fn gpu_of_local_rank(local_rank: usize, cuda_visible_devices: Option<&str>) -> Result<usize> {
    let Some(visible) = cuda_visible_devices else { return Ok(local_rank) };
    let count = visible.split(',').filter(|d| !d.trim().is_empty()).count();
    match count {
        1 => Ok(0),
        n if local_rank < n => Ok(local_rank),
        n => anyhow::bail!(
            "local rank {local_rank} has no GPU: CUDA_VISIBLE_DEVICES = {visible:?} shows {n}; run at most {n} ranks per machine (one per GPU)"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::gpu_of_local_rank;

    #[test]
    fn local_rank_picks_the_gpu() {
        assert_eq!(gpu_of_local_rank(3, None).unwrap(), 3);
        assert_eq!(gpu_of_local_rank(3, Some("0,1,2,3")).unwrap(), 3);
        assert_eq!(gpu_of_local_rank(3, Some("5")).unwrap(), 0, "a GPU of its own");
        let err = gpu_of_local_rank(2, Some("4,5")).unwrap_err().to_string();
        assert!(err.contains("local rank 2") && err.contains("\"4,5\"") && err.contains("at most 2 ranks"), "{err}");
    }
}
