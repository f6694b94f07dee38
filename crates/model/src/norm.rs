//! RMSNorm as Hugging Face's `MistralRMSNorm`: statistics in f32, scale by the weight.

use burn::tensor::{DType, Tensor, backend::Backend};

use crate::{flex, rows_flex};

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
        let normed = if flex::f32_kernels_apply::<B>(dtype) {
            rows_flex::rms_normalize(x, self.eps)
        } else {
            normalize_with_tensor_ops(x, self.eps)
        };
        let normed = if dtype == DType::F32 { normed } else { normed.cast(dtype) };
        // As [rows, hidden] times a [1, hidden] row: burn-flex broadcasts a row over a 2-D
        // tensor as a SIMD loop, a [1, 1, hidden] one over 3-D with its strided iterator.
        let [batch, seq, hidden] = normed.dims();
        (normed.reshape([batch * seq, hidden]) * self.weight.clone().unsqueeze::<2>()).reshape([batch, seq, hidden])
    }
}

fn normalize_with_tensor_ops<B: Backend>(x: Tensor<B, 3>, eps: f64) -> Tensor<B, 3> {
    let inv_rms = x.clone().square().mean_dim(2).add_scalar(eps).sqrt().recip();
    x * inv_rms
}
