//! A bias-free `nn.Linear`, optionally with a LoRA adapter: the weight is stored
//! `[out_features, in_features]` as in HF.

use burn::tensor::{Tensor, backend::Backend};
use shard_kernels::matmul;

use crate::LoraAdapter;

#[derive(Debug, Clone)]
pub struct Linear<B: Backend> {
    pub weight: Tensor<B, 2>,
    pub lora: Option<LoraAdapter<B>>,
}

impl<B: Backend> Linear<B> {
    pub fn new(weight: Tensor<B, 2>) -> Self {
        Self { weight, lora: None }
    }

    /// `x`: [batch, seq, in] -> [batch, seq, out], as one matrix product over all tokens.
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let [batch, seq, features] = x.dims();
        let out = self.weight.dims()[0];
        let x = x.reshape([batch * seq, features]);
        let y = matmul(x.clone(), self.weight.clone().transpose());
        let y = match &self.lora {
            Some(adapter) => y + adapter.forward(x),
            None => y,
        };
        y.reshape([batch, seq, out])
    }
}
