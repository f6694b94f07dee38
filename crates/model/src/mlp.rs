//! The SwiGLU feed-forward block: down(silu(gate(x)) * up(x)).

use burn::tensor::{DType, Tensor, activation::silu, backend::Backend};

use crate::Linear;

#[derive(Debug, Clone)]
pub struct Mlp<B: Backend> {
    pub gate_proj: Linear<B>,
    pub up_proj: Linear<B>,
    pub down_proj: Linear<B>,
}

impl<B: Backend> Mlp<B> {
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let gate = silu_rounded_once(self.gate_proj.forward(x.clone()));
        self.down_proj.forward(gate * self.up_proj.forward(x))
    }
}

/// SiLU as torch computes it on a low-precision tensor: in f32, rounded once to the input's
/// dtype (forward and backward). Burn's `silu` is `x * sigmoid(x)`, which in bf16 would round
/// the sigmoid and the product separately.
fn silu_rounded_once<B: Backend>(x: Tensor<B, 3>) -> Tensor<B, 3> {
    let dtype = x.dtype();
    if dtype == DType::F32 { silu(x) } else { silu(x.cast(DType::F32)).cast(dtype) }
}
