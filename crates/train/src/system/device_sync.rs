//! cubecl queues a kernel's compile or launch error and reports it at the device's next sync.
//! Unchecked, a run's first such failure would read as the failure of whatever synced next (on
//! cuda, the fence before an NCCL call). So the run syncs the device itself after the engine is
//! built and after its first step, where the error is named for what it is.

use burn::tensor::backend::Backend;

use crate::config::run_config::Device;

/// Waits for the kernels queued on `device` so far; an error says a kernel of `on` failed
/// (`when`: what the run had just done).
pub fn check_kernels_ran<B: Backend>(device: &B::Device, on: Device, when: &str) -> anyhow::Result<()> {
    B::sync(device).map_err(|e| anyhow::anyhow!(kernel_failure(on, when, &format!("{e:?}"))))
}

fn kernel_failure(on: Device, when: &str, error: &str) -> String {
    format!("a {} kernel failed to compile or launch ({when}; the device sync after it reported it): {error}", on.name())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_sync_names_the_kernels_not_the_collectives() {
        let line = kernel_failure(Device::Cuda, "the first step", "Unknown(\"CUDA_ERROR_INVALID_PTX\")");
        assert!(line.starts_with("a cuda kernel failed to compile or launch (the first step;"), "{line}");
        assert!(line.ends_with("CUDA_ERROR_INVALID_PTX\")") && !line.contains("NCCL"), "{line}");
    }
}
