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

/// Queries per cube in the forward and dq kernels (one unit each), and keys per cube in the dk/dv kernel.
const QUERY_TILE: usize = 32;
/// Keys per shared-memory tile in the forward and dq kernels; queries per tile in the dk/dv kernel.
/// Two f32 tiles of 16 rows of head_dim 128 take 16 KiB of the 32 KiB that lavapipe and Metal give a cube.
const KEY_TILE: usize = 16;

/// Mesa's lavapipe (Vulkan on the CPU) ends every loop of a shader invocation once its loops
/// have run this many iterations in all (llvmpipe's LP_MAX_TGSI_LOOP_ITERATIONS) and leaves the
/// rest of the invocation's outputs unwritten. GPUs have no such limit.
pub(crate) const LAVAPIPE_LOOP_LIMIT: usize = 65_535;

/// The head_dim elements that one iteration of the kernels' inner loops handles (unrolled): the
/// largest of 8, 4, 2, 1 that divides head_dim, to stay under [`LAVAPIPE_LOOP_LIMIT`] longer (one
/// per iteration crossed it at 57 positions with head_dim 128 and 4 query heads per kv head).
fn unroll(head_dim: usize) -> usize {
    [8, 4, 2, 1].into_iter().find(|&unroll| head_dim.is_multiple_of(unroll)).expect("1 divides head_dim")
}

/// The most loop iterations that one invocation of the kernels runs in all, a loop of n
/// iterations counted as n + 1 (its exit test: counted as n, this allowed 493 positions below,
/// where lavapipe left dk wrong): a forward (or dq) unit's walk
/// over the keys (per tile of keys, its share of the tile's load and, per key, the dot products
/// and the accumulation); a dk/dv unit's over the queries after its key in each query head of
/// the group; and the loops over a row at either end. With head_dim 128 and 4 query heads per kv
/// head, the dk/dv walk allows 465 positions; on lavapipe 465 were right and 475 wrong.
pub(crate) fn loop_iterations(seq: usize, heads: usize, kv_heads: usize, head_dim: usize) -> usize {
    let looped = |iterations: usize| iterations + 1;
    let chunks = head_dim / unroll(head_dim);
    let key_tiles = seq.div_ceil(KEY_TILE);
    let load = (KEY_TILE * head_dim).div_ceil(QUERY_TILE);
    let per_key_tile = looped(load) + 2 * looped(KEY_TILE) + (2 * KEY_TILE + 1) * looped(chunks);
    let key_walk = looped(key_tiles) + key_tiles * per_key_tile;
    let groups = heads / kv_heads;
    let query_walk = looped(groups) + groups * (looped(seq) + seq * 2 * looped(chunks));
    3 * looped(head_dim) + key_walk.max(query_walk)
}

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
