//! A decoder layer, built from its tensors in HF naming so that it can be run on its own.

use burn::tensor::{Tensor, backend::Backend};

use crate::{
    Attention, Block, Linear, LoraAdapter, LoraConfig, MistralConfig, Mlp, PROJECTIONS, RmsNorm, SequenceContext, Weights, WeightsError,
    lora_params,
};

/// The adapters to build a layer with: their config and the seed of this layer's dropout masks.
#[derive(Debug, Clone, Copy)]
pub struct LayerLora<'a> {
    pub config: &'a LoraConfig,
    pub dropout_seed: u64,
}

#[derive(Debug, Clone)]
pub struct DecoderLayer<B: Backend> {
    pub input_layernorm: RmsNorm<B>,
    pub self_attn: Attention<B>,
    pub post_attention_layernorm: RmsNorm<B>,
    pub mlp: Mlp<B>,
}

impl<B: Backend> DecoderLayer<B> {
    /// Takes `model.layers.{index}.*` out of `weights`, with the adapters of `lora` when given.
    pub fn from_weights(
        cfg: &MistralConfig,
        index: usize,
        weights: &mut Weights<B>,
        lora: Option<LayerLora>,
    ) -> Result<Self, WeightsError> {
        // Block::params lists the seven projections in PROJECTIONS order, then the two norms.
        let specs = Block::Layer(index).params(cfg);
        let mut linears = Vec::with_capacity(PROJECTIONS.len());
        for (i, proj) in PROJECTIONS.iter().enumerate() {
            let mut linear = Linear::new(weights.take::<2>(&specs[i])?);
            if let Some(lora) = lora.filter(|l| l.config.targets(proj)) {
                let adapter_specs = lora_params(cfg, index, lora.config.r, std::iter::once(*proj));
                let p = lora.config.dropout;
                linear.lora = Some(LoraAdapter {
                    a: weights.take::<2>(&adapter_specs[0])?,
                    b: weights.take::<2>(&adapter_specs[1])?,
                    scale: lora.config.scale(),
                    dropout: (p > 0.0).then(|| (p, crate::hash::stream(lora.dropout_seed, proj))),
                });
            }
            linears.push(linear);
        }
        let [q, k, v, o, gate_proj, up_proj, down_proj]: [Linear<B>; 7] = linears.try_into().expect("seven projections");
        let norm =
            |weights: &mut Weights<B>, i: usize| weights.take::<1>(&specs[i]).map(|weight| RmsNorm { weight, eps: cfg.rms_norm_eps });
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
