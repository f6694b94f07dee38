//! A GPU's memory as a run uses it, for `summary.json` next to the plan's prediction: cubecl's
//! pool (what it has reserved from the driver, and what of that live tensors hold), and on cuda
//! the device as a whole (cuMemGetInfo: what nvidia-smi shows, the CUDA context included; wgpu
//! has no such figure: 0).
//!
//! It is read after each step and the most seen is kept. The pool keeps its pages between steps
//! (it frees unused ones only now and then), so its reserved bytes after a step are close to the
//! step's peak, but may fall short of it.

use serde::Serialize;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct DeviceMemory {
    pub pool_reserved_bytes: u64,
    pub pool_in_use_bytes: u64,
    pub device_used_bytes: u64,
}

/// Reads the memory of the device a rank trains on.
pub type DeviceMemoryProbe = Box<dyn Fn() -> DeviceMemory>;

impl DeviceMemory {
    /// Each figure's larger value.
    pub fn max(self, other: DeviceMemory) -> DeviceMemory {
        DeviceMemory {
            pool_reserved_bytes: self.pool_reserved_bytes.max(other.pool_reserved_bytes),
            pool_in_use_bytes: self.pool_in_use_bytes.max(other.pool_in_use_bytes),
            device_used_bytes: self.device_used_bytes.max(other.device_used_bytes),
        }
    }

    /// The three figures, to sum over ranks as f64 scalars (exact below 2^53 bytes).
    pub fn to_scalars(self) -> [f64; 3] {
        [self.pool_reserved_bytes as f64, self.pool_in_use_bytes as f64, self.device_used_bytes as f64]
    }

    pub fn from_scalars(s: &[f64]) -> DeviceMemory {
        DeviceMemory { pool_reserved_bytes: s[0] as u64, pool_in_use_bytes: s[1] as u64, device_used_bytes: s[2] as u64 }
    }
}

/// The probe of CUDA device `ordinal`: cubecl's memory usage of burn-cuda's device, and
/// cuMemGetInfo in the device's primary context (the one cubecl uses too).
#[cfg(feature = "cuda")]
pub fn cuda_probe(ordinal: usize) -> anyhow::Result<DeviceMemoryProbe> {
    use anyhow::Context;
    use burn_cubecl::cubecl::cuda::{CudaDevice, CudaRuntime};
    let context = cudarc::driver::CudaContext::new(ordinal).with_context(|| format!("CUDA device {ordinal}"))?;
    let device = CudaDevice::new(ordinal);
    Ok(Box::new(move || {
        let free_total = context.bind_to_thread().and_then(|()| cudarc::driver::result::mem_get_info()).ok();
        DeviceMemory { device_used_bytes: free_total.map_or(0, |(free, total)| (total - free) as u64), ..pool_of::<CudaRuntime>(&device) }
    }))
}

/// The free memory of CUDA device `ordinal` now (cuMemGetInfo in its primary context, the one
/// burn-cuda uses, so the context's own memory is taken off already).
#[cfg(feature = "cuda")]
pub fn cuda_free_bytes(ordinal: usize) -> anyhow::Result<u64> {
    use anyhow::Context;
    let context = cudarc::driver::CudaContext::new(ordinal).with_context(|| format!("CUDA device {ordinal}"))?;
    context
        .bind_to_thread()
        .and_then(|()| cudarc::driver::result::mem_get_info())
        .map(|(free, _total)| free as u64)
        .with_context(|| format!("the free memory of CUDA device {ordinal} (cuMemGetInfo)"))
}

/// The probe of a burn-wgpu device: cubecl's pool only.
#[cfg(feature = "wgpu")]
pub fn wgpu_probe(device: burn_cubecl::cubecl::wgpu::WgpuDevice) -> DeviceMemoryProbe {
    Box::new(move || pool_of::<burn_cubecl::cubecl::wgpu::WgpuRuntime>(&device))
}

/// cubecl's pool on `device`; a failed read is reported as zero rather than end a run that trains fine.
#[cfg(any(feature = "cuda", feature = "wgpu"))]
fn pool_of<R: burn_cubecl::cubecl::Runtime>(device: &R::Device) -> DeviceMemory {
    let pool = R::client(device).memory_usage().ok();
    DeviceMemory {
        pool_reserved_bytes: pool.as_ref().map_or(0, |p| p.bytes_reserved),
        pool_in_use_bytes: pool.as_ref().map_or(0, |p| p.bytes_in_use),
        device_used_bytes: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_is_per_figure_and_scalars_round_trip() {
        let a = DeviceMemory { pool_reserved_bytes: 10, pool_in_use_bytes: 7, device_used_bytes: 30 };
        let b = DeviceMemory { pool_reserved_bytes: 12, pool_in_use_bytes: 5, device_used_bytes: 29 };
        assert_eq!(a.max(b), DeviceMemory { pool_reserved_bytes: 12, pool_in_use_bytes: 7, device_used_bytes: 30 });
        let big = DeviceMemory { pool_reserved_bytes: 80 << 30, pool_in_use_bytes: 3, device_used_bytes: 1 << 40 };
        assert_eq!(DeviceMemory::from_scalars(&big.to_scalars()), big);
    }
}
