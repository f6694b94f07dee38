//! Mixed precision as PyTorch FSDP2's `MixedPrecisionPolicy(param_dtype, reduce_dtype)`: trained
//! parameters live as f32 master shards, are cast to the compute dtype before every all-gather,
//! and their gradients are cast to the reduce dtype before the reduce-scatter, then summed into
//! f32 gradient shards. Frozen parts live in the compute dtype.

use burn::tensor::DType;

/// A floating-point dtype the engine computes or communicates in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Float {
    F32,
    Bf16,
}

impl Float {
    pub fn dtype(self) -> DType {
        match self {
            Float::F32 => DType::F32,
            Float::Bf16 => DType::BF16,
        }
    }

    pub fn bytes(self) -> usize {
        match self {
            Float::F32 => 4,
            Float::Bf16 => 2,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Precision {
    /// What units are gathered and computed in (transformers' upcasts aside).
    pub compute: Float,
    /// What gradients are reduce-scattered in.
    pub reduce: Float,
}

impl Precision {
    /// Everything in f32: the engine's exact mode.
    pub const F32: Self = Self { compute: Float::F32, reduce: Float::F32 };
    /// bf16 compute, f32 reductions: FSDP2's usual policy.
    pub const BF16: Self = Self { compute: Float::Bf16, reduce: Float::F32 };
}
