//! The model's and the optimizer's ops, each choosing its own path: on burn-flex (the CPU
//! backend, or burn's autodiff over it), for f32, a one-pass kernel; elsewhere burn's tensor ops.
//!
//! burn-flex runs every tensor op as a pass of its own over memory, with no fusion: an AdamW
//! update of fourteen ops makes fourteen passes over four shards, a softmax under autodiff four
//! ops each way. The kernels here work on the tensors' storage in one pass instead. Each op has
//! its tensor-op path beside it as the reference, and a test that the two agree (to the bit
//! where the kernel does the same f32 operations, within rounding where it sums in f64). This is
//! the one crate of the workspace, besides the binary, that names a concrete backend; the home of
//! the GPU kernels too: with the features `wgpu` and `cuda`, the cubecl backends' IEEE f32 matmul
//! launch ([`matmul()`]) and the fused attention's kernels (`attention_cube`).

mod adamw;
mod adamw_flex;
mod attention;
mod attention_cube;
mod attention_flex;
mod cross_entropy;
mod cross_entropy_flex;
mod downcast;
mod exp_simd;
mod flex;
mod heads;
mod heads_flex;
mod host_update;
mod matmul;
mod matmul_cube;
mod reshape;
mod rows;
mod rows_flex;

pub use adamw::{AdamWCoefficients, AdamWShards, adamw_step, adamw_step_on_host};
pub use attention::{AttentionLayout, EagerMask, eager_attention, eager_attention_masked, fused_attention, fused_attention_fits};
pub use cross_entropy::{LossRows, cross_entropy_sum};
pub use heads::{Heads, Rope, RopeTables, merge_heads, split_heads};
pub use host_update::{sum_of_squares_on_host, update_on_host};
pub use matmul::{MatmulPath, allow_tf32, f32_matmul_name, matmul, matmul_path};
pub use reshape::reshape_flat;
pub use rows::{rms_normalize, softmax_last};
