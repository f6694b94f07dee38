//! The fused attention as CubeCL kernels, for the cubecl backends: burn-wgpu (feature `wgpu`,
//! tested on Mesa's lavapipe in CI) and burn-cuda (feature `cuda`), and burn's autodiff over them.
//! FlashAttention-2: the forward keeps the output and the rows' log-sum-exp, the backward
//! recomputes the score tiles; softmax and sums in f32 whatever the inputs' dtype.

use burn::tensor::{Tensor, backend::Backend};

use crate::attention::AttentionLayout;

#[cfg(any(feature = "wgpu", feature = "cuda"))]
mod autodiff;
#[cfg(any(feature = "wgpu", feature = "cuda"))]
mod backward;
#[cfg(any(feature = "wgpu", feature = "cuda"))]
mod forward;
#[cfg(any(feature = "wgpu", feature = "cuda"))]
mod geometry;

/// Whether B is a cubecl backend (burn-wgpu / burn-cuda, or Autodiff over one) that the cube kernels serve.
#[cfg_attr(not(any(feature = "wgpu", feature = "cuda")), allow(clippy::extra_unused_type_parameters))]
pub(crate) fn serves<B: Backend>() -> bool {
    #[cfg(feature = "wgpu")]
    if crate::downcast::is_cube_backend::<B, burn::backend::wgpu::WgpuRuntime, f32, i32, u32>() {
        return true;
    }
    #[cfg(feature = "cuda")]
    if crate::downcast::is_cube_backend::<B, cubecl::cuda::CudaRuntime, f32, i32, u8>() {
        return true;
    }
    false
}

/// The fused attention on a cubecl backend; only called when serves::<B>().
pub(crate) fn fused_attention<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    layout: &AttentionLayout,
    scale: f64,
) -> Tensor<B, 4> {
    #[cfg(feature = "wgpu")]
    if crate::downcast::is_cube_backend::<B, burn::backend::wgpu::WgpuRuntime, f32, i32, u32>() {
        return autodiff::fused_attention::<B, burn::backend::wgpu::WgpuRuntime, f32, i32, u32>(q, k, v, layout, scale);
    }
    #[cfg(feature = "cuda")]
    if crate::downcast::is_cube_backend::<B, cubecl::cuda::CudaRuntime, f32, i32, u8>() {
        return autodiff::fused_attention::<B, cubecl::cuda::CudaRuntime, f32, i32, u8>(q, k, v, layout, scale);
    }
    let _ = (q, k, v, layout, scale);
    unreachable!("the cube attention runs on burn-wgpu or burn-cuda (or autodiff over one) only: check serves() first")
}

#[cfg(all(test, feature = "wgpu"))]
mod tests;
