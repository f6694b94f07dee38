//! Mixed precision as PyTorch FSDP2's `MixedPrecisionPolicy(param_dtype, reduce_dtype)`: trained
//! parameters live as f32 master shards, are cast to the compute dtype before every all-gather,
//! and their gradients are cast to the reduce dtype before the reduce-scatter, then summed into
//! f32 gradient shards. Frozen parts live in the compute dtype.

use shard_core::Dtype;

/// FSDP2's `MixedPrecisionPolicy`: the dtype units are gathered and computed in, and the one
/// gradients are reduce-scattered in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MixedPrecision {
    /// What units are gathered and computed in (transformers' upcasts aside).
    pub compute: Dtype,
    /// What gradients are reduce-scattered in.
    pub reduce: Dtype,
}

impl MixedPrecision {
    /// Everything in f32: the engine's exact mode.
    pub const F32: Self = Self { compute: Dtype::F32, reduce: Dtype::F32 };
    /// bf16 compute, f32 reductions: FSDP2's usual policy.
    pub const BF16: Self = Self { compute: Dtype::Bf16, reduce: Dtype::F32 };
}
