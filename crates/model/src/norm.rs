//! RMSNorm as Hugging Face's `MistralRMSNorm`: statistics in f32, scale by the weight.

use burn::tensor::{Tensor, backend::Backend};
use shard_kernels::rms_normalize;

#[derive(Debug, Clone)]
pub struct RmsNorm<B: Backend> {
    pub weight: Tensor<B, 1>,
    pub eps: f64,
}

impl<B: Backend> RmsNorm<B> {
    /// `x`: [batch, seq, hidden].
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let normed = rms_normalize(x, self.eps);
        // As [rows, hidden] times a [1, hidden] row: burn-flex broadcasts a row over a 2-D
        // tensor as a SIMD loop, a [1, 1, hidden] one over 3-D with its strided iterator.
        let [batch, seq, hidden] = normed.dims();
        (normed.reshape([batch * seq, hidden]) * self.weight.clone().unsqueeze::<2>()).reshape([batch, seq, hidden])
    }
}
