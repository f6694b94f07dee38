//! LoRA as peft defines it: y = W x + (alpha / r) * B(A(dropout(x))), with A [r, in] and
//! B [out, r] on the projections named in [`LoraConfig::targets`](crate::LoraConfig).

use burn::tensor::{DType, Tensor, TensorData, backend::Backend};
use shard_kernels::matmul;

/// One adapter pair on a projection.
#[derive(Debug, Clone)]
pub struct LoraAdapter<B: Backend> {
    /// [r, in]
    pub a: Tensor<B, 2>,
    /// [out, r]
    pub b: Tensor<B, 2>,
    pub scale: f64,
    /// Drop probability and the seed of this adapter's mask: the same seed gives the same mask,
    /// so that a forward pass recomputed in backward drops the same elements.
    pub dropout: Option<(f64, u64)>,
}

impl<B: Backend> LoraAdapter<B> {
    /// `x`: [tokens, in] -> the adapter's contribution [tokens, out].
    pub fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        let x = match self.dropout {
            Some((p, seed)) if p > 0.0 => x.clone() * dropout_mask::<B>(x.dims(), p, seed, &x.device()).cast(x.dtype()),
            _ => x,
        };
        matmul(matmul(x, self.a.clone().transpose()), self.b.clone().transpose()).mul_scalar(self.scale)
    }
}

/// Inverted dropout: each element kept with probability 1 - p and scaled by 1 / (1 - p), from a
/// hash of (seed, element index) so that any process can remake the same mask.
fn dropout_mask<B: Backend>(dims: [usize; 2], p: f64, seed: u64, device: &B::Device) -> Tensor<B, 2> {
    let keep = (1.0 / (1.0 - p)) as f32;
    let values: Vec<f32> = (0..dims[0] * dims[1])
        .map(|i| {
            let u = crate::hash::uniform(seed, i as u64);
            if u < p { 0.0 } else { keep }
        })
        .collect();
    Tensor::from_data(TensorData::new(values, dims), (device, DType::F32))
}
