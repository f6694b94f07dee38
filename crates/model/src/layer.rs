//! A decoder layer, built from its tensors in HF naming so that it can be run on its own.

use burn::tensor::{Tensor, backend::Backend};

use crate::{Attention, Block, Linear, MistralConfig, Mlp, RmsNorm, SequenceContext, Weights, WeightsError};

#[derive(Debug, Clone)]
pub struct DecoderLayer<B: Backend> {
    pub input_layernorm: RmsNorm<B>,
    pub self_attn: Attention<B>,
    pub post_attention_layernorm: RmsNorm<B>,
    pub mlp: Mlp<B>,
}

impl<B: Backend> DecoderLayer<B> {
    /// Takes `model.layers.{index}.*` out of `weights`.
    pub fn from_weights(cfg: &MistralConfig, index: usize, weights: &mut Weights<B>) -> Result<Self, WeightsError> {
        // Block::params lists the seven projections in PROJECTIONS order, then the two norms.
        let specs = Block::Layer(index).params(cfg);
        let mut linear = |i: usize| weights.take::<2>(&specs[i]).map(|weight| Linear { weight });
        let (q, k, v, o) = (linear(0)?, linear(1)?, linear(2)?, linear(3)?);
        let (gate_proj, up_proj, down_proj) = (linear(4)?, linear(5)?, linear(6)?);
        let norm = |weights: &mut Weights<B>, i: usize| {
            weights.take::<1>(&specs[i]).map(|weight| RmsNorm { weight, eps: cfg.rms_norm_eps })
        };
        Ok(Self {
            input_layernorm: norm(weights, 7)?,
            self_attn: Attention::new(cfg, q, k, v, o),
            post_attention_layernorm: norm(weights, 8)?,
            mlp: Mlp { gate_proj, up_proj, down_proj },
        })
    }

    /// `x`: [batch, seq, hidden] -> [batch, seq, hidden].
    pub fn forward(&self, x: Tensor<B, 3>, ctx: &SequenceContext<B>) -> Tensor<B, 3> {
        let x = x.clone() + self.self_attn.forward(self.input_layernorm.forward(x), ctx);
        x.clone() + self.mlp.forward(self.post_attention_layernorm.forward(x))
    }
}
