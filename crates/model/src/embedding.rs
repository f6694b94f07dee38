//! The token embedding and the head (final norm + untied `lm_head`).

use burn::tensor::{Int, Tensor, backend::Backend};

use crate::{Block, Linear, MistralConfig, RmsNorm, Weights, WeightsError};

#[derive(Debug, Clone)]
pub struct Embedding<B: Backend> {
    /// [vocab, hidden]
    pub weight: Tensor<B, 2>,
}

impl<B: Backend> Embedding<B> {
    pub fn from_weights(cfg: &MistralConfig, weights: &mut Weights<B>) -> Result<Self, WeightsError> {
        Ok(Self { weight: weights.take(&Block::Embedding.params(cfg)[0])? })
    }

    /// `ids`: [batch, seq] -> [batch, seq, hidden].
    pub fn forward(&self, ids: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        let [batch, seq] = ids.dims();
        let hidden = self.weight.dims()[1];
        self.weight.clone().select(0, ids.reshape([batch * seq])).reshape([batch, seq, hidden])
    }
}

#[derive(Debug, Clone)]
pub struct Head<B: Backend> {
    pub norm: RmsNorm<B>,
    pub lm_head: Linear<B>,
}

impl<B: Backend> Head<B> {
    pub fn from_weights(cfg: &MistralConfig, weights: &mut Weights<B>) -> Result<Self, WeightsError> {
        let specs = Block::Head.params(cfg);
        Ok(Self {
            norm: RmsNorm { weight: weights.take(&specs[0])?, eps: cfg.rms_norm_eps },
            lm_head: Linear::new(weights.take(&specs[1])?),
        })
    }

    /// `x`: [batch, seq, hidden] -> logits [batch, seq, vocab].
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        self.lm_head.forward(self.norm.forward(x))
    }
}
