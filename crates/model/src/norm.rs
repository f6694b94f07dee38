//! RMSNorm as Hugging Face's `MistralRMSNorm`: statistics in f32, scale by the weight.

use burn::tensor::{DType, Tensor, backend::Backend};

#[derive(Debug, Clone)]
pub struct RmsNorm<B: Backend> {
    pub weight: Tensor<B, 1>,
    pub eps: f64,
}

impl<B: Backend> RmsNorm<B> {
    /// `x`: [batch, seq, hidden].
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let dtype = x.dtype();
        let x = if dtype == DType::F32 { x } else { x.cast(DType::F32) };
        let inv_rms = x.clone().square().mean_dim(2).add_scalar(self.eps).sqrt().recip();
        let normed = x * inv_rms;
        let normed = if dtype == DType::F32 { normed } else { normed.cast(dtype) };
        normed * self.weight.clone().unsqueeze::<3>()
    }
}
