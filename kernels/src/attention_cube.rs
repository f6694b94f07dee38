//! The fused attention's kernels for the cubecl backends (burn-wgpu, burn-cuda): not yet written,
//! so no backend is served here and [`crate::fused_attention`] takes the eager path on them.

use burn::tensor::{Tensor, backend::Backend};

use crate::AttentionLayout;

/// Whether B is a cubecl backend (burn-wgpu / burn-cuda, or Autodiff over one) that the cube kernels serve.
#[allow(clippy::extra_unused_type_parameters)] // the stub serves none; the kernels' version tests B
pub(crate) fn serves<B: Backend>() -> bool {
    false
}

/// The fused attention on a cubecl backend; only called when serves::<B>().
pub(crate) fn fused_attention<B: Backend>(
    _q: Tensor<B, 4>,
    _k: Tensor<B, 4>,
    _v: Tensor<B, 4>,
    _layout: &AttentionLayout,
    _scale: f64,
) -> Tensor<B, 4> {
    unreachable!("the cube kernels serve no backend yet")
}
