//! The whole model in one piece: for tests, inspection and single-process runs. The sharded
//! engine runs the same blocks one at a time instead.

use burn::tensor::{Int, Tensor, backend::Backend};
use shard_core::AttentionPath;

use crate::{DecoderLayer, Embedding, Head, MistralConfig, SequenceContext, Weights, WeightsError};

#[derive(Debug, Clone)]
pub struct Mistral<B: Backend> {
    pub config: MistralConfig,
    pub embed_tokens: Embedding<B>,
    pub layers: Vec<DecoderLayer<B>>,
    pub head: Head<B>,
}

impl<B: Backend> Mistral<B> {
    /// Builds every block; tensors left over in `weights` are an error too.
    pub fn from_weights(cfg: &MistralConfig, mut weights: Weights<B>) -> Result<Self, WeightsError> {
        let embed_tokens = Embedding::from_weights(cfg, &mut weights)?;
        let layers =
            (0..cfg.num_hidden_layers).map(|i| DecoderLayer::from_weights(cfg, i, &mut weights, None)).collect::<Result<_, _>>()?;
        let head = Head::from_weights(cfg, &mut weights)?;
        Ok(Self { config: cfg.clone(), embed_tokens, layers, head })
    }

    /// `ids`: [batch, seq] -> logits [batch, seq, vocab], computed in the dtype of the weights,
    /// with the fused attention.
    pub fn forward(&self, ids: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        self.forward_attending(ids, AttentionPath::Fused)
    }

    /// [`Self::forward`] with the attention `path`.
    pub fn forward_attending(&self, ids: Tensor<B, 2, Int>, path: AttentionPath) -> Tensor<B, 3> {
        let (seq, device, dtype) = (ids.dims()[1], ids.device(), self.embed_tokens.weight.dtype());
        let ctx = SequenceContext::new(&self.config, seq, &[vec![0]], &device, dtype, path);
        let mut x = self.embed_tokens.forward(ids);
        for layer in &self.layers {
            x = layer.forward(x, &ctx);
        }
        self.head.forward(x)
    }
}
