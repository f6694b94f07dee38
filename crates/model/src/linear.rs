//! A bias-free `nn.Linear`: the weight is stored `[out_features, in_features]` as in HF.

use burn::tensor::{Tensor, backend::Backend};

#[derive(Debug, Clone)]
pub struct Linear<B: Backend> {
    pub weight: Tensor<B, 2>,
}

impl<B: Backend> Linear<B> {
    /// `x`: [batch, seq, in] -> [batch, seq, out], as one matrix product over all tokens.
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let [batch, seq, features] = x.dims();
        let out = self.weight.dims()[0];
        x.reshape([batch * seq, features])
            .matmul(self.weight.clone().transpose())
            .reshape([batch, seq, out])
    }
}
