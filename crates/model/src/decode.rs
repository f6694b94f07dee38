//! Generation: the prompt in one forward pass, then one token at a time with the keys and values
//! of earlier tokens kept in a [`KvCache`] (a rolling buffer of Mistral's sliding window).
//!
//! Attention is computed as HF's eager attention computes it (scores scaled after the product,
//! softmax in f32), grouped-query heads by viewing the queries of a key/value head's group as
//! one [groups * tokens] block instead of repeating the keys.

use burn::tensor::{DType, Int, Tensor, TensorData, activation::softmax, backend::Backend};
use shard_kernels::matmul;

use crate::rope::rope_tables;
use crate::sampling::Sampling;
use crate::{
    Attention, DecoderLayer, Embedding, Head, KvCache, LayerLora, LoraConfig, Mistral, MistralConfig, Weights, WeightsError, may_attend,
};

/// Builds the whole model from `weights`, with `lora`'s adapters on its projections when given
/// (no dropout: generation is inference).
pub fn inference_model<B: Backend>(
    cfg: &MistralConfig,
    mut weights: Weights<B>,
    lora: Option<&LoraConfig>,
) -> Result<Mistral<B>, WeightsError> {
    let lora = lora.map(|l| LoraConfig { dropout: 0.0, ..l.clone() });
    let embed_tokens = Embedding::from_weights(cfg, &mut weights)?;
    let layers = (0..cfg.num_hidden_layers)
        .map(|i| DecoderLayer::from_weights(cfg, i, &mut weights, lora.as_ref().map(|config| LayerLora { config, dropout_seed: 0 })))
        .collect::<Result<_, _>>()?;
    let head = Head::from_weights(cfg, &mut weights)?;
    Ok(Mistral { config: cfg.clone(), embed_tokens, layers, head })
}

/// What to generate: at most `max_new_tokens`, ending early after any of `stop_ids` (included).
#[derive(Debug, Clone)]
pub struct GenerateOptions {
    pub max_new_tokens: usize,
    pub stop_ids: Vec<u32>,
    pub sampling: Sampling,
}

/// The continuation of `prompt` (at least one token), each token passed to `on_token` as it is
/// chosen. `stream` tells prompts apart in the sampler's random draws.
pub fn generate<B: Backend>(
    model: &Mistral<B>,
    prompt: &[u32],
    options: &GenerateOptions,
    stream: u64,
    mut on_token: impl FnMut(u32),
) -> Vec<u32> {
    assert!(!prompt.is_empty(), "a prompt has at least one token");
    let mut decoder = Decoder::new(model, prompt.len() + options.max_new_tokens);
    let mut generated = Vec::with_capacity(options.max_new_tokens);
    if options.max_new_tokens == 0 {
        return generated;
    }
    let mut logits = decoder.feed(prompt);
    for step in 0..options.max_new_tokens {
        let token = options.sampling.choose(&logits, stream, step as u64);
        generated.push(token);
        on_token(token);
        if options.stop_ids.contains(&token) || step + 1 == options.max_new_tokens {
            break;
        }
        logits = decoder.feed(&[token]);
    }
    generated
}

/// One sequence being decoded.
pub struct Decoder<'a, B: Backend> {
    model: &'a Mistral<B>,
    cache: KvCache<B>,
    /// RoPE's cos and sin at positions 0..max_len: [max_len, head_dim].
    cos: Tensor<B, 2>,
    sin: Tensor<B, 2>,
}

impl<'a, B: Backend> Decoder<'a, B> {
    /// For a sequence of at most `max_len` tokens.
    pub fn new(model: &'a Mistral<B>, max_len: usize) -> Self {
        let cfg = &model.config;
        let device = model.embed_tokens.weight.device();
        let dtype = model.embed_tokens.weight.dtype();
        let (cos, sin) = rope_tables(cfg.head_dim, cfg.rope_theta, max_len);
        let table = |t: Vec<f32>| Tensor::<B, 2>::from_data(TensorData::new(t, [max_len, cfg.head_dim]), (&device, DType::F32)).cast(dtype);
        Self { model, cache: KvCache::new(cfg, max_len, &device, dtype), cos: table(cos), sin: table(sin) }
    }

    /// Runs `ids` (the whole prompt first, then one token at a time) and returns the logits that
    /// predict the token after the last of them, in f32.
    pub fn feed(&mut self, ids: &[u32]) -> Vec<f32> {
        let start = self.cache.seen();
        assert!(start == 0 || ids.len() == 1, "after the prompt, one token at a time");
        let device = self.model.embed_tokens.weight.device();
        let ids: Vec<i64> = ids.iter().map(|&t| t as i64).collect();
        let n = ids.len();
        let mut x = self.model.embed_tokens.forward(Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [1, n]), &device));
        for (index, layer) in self.model.layers.iter().enumerate() {
            let attended = self.attend(index, &layer.self_attn, layer.input_layernorm.forward(x.clone()));
            x = x + attended;
            x = x.clone() + layer.mlp.forward(layer.post_attention_layernorm.forward(x));
        }
        self.cache.advance(n);
        let logits = self.model.head.forward(x.narrow(1, n - 1, 1));
        logits.cast(DType::F32).into_data().into_vec::<f32>().expect("f32 logits")
    }

    /// Layer `index`'s attention for `x` [1, n, hidden], the tokens from position `seen()`.
    fn attend(&mut self, index: usize, attn: &Attention<B>, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let [_, n, _] = x.dims();
        let (heads, kv_heads, dim) = (attn.num_heads, attn.num_kv_heads, attn.head_dim);
        let groups = heads / kv_heads;
        let start = self.cache.seen();
        let split = |t: Tensor<B, 3>, count: usize| t.reshape([1, n, count, dim]).swap_dims(1, 2);
        let q = self.rotate(split(attn.q_proj.forward(x.clone()), heads), start);
        let k = self.rotate(split(attn.k_proj.forward(x.clone()), kv_heads), start);
        let v = split(attn.v_proj.forward(x), kv_heads);
        self.cache.write(index, k.clone(), v.clone());
        // The prompt attends to itself under the causal (sliding-window) mask; a later token to
        // what the cache holds, which is exactly the window it may see.
        let (keys, values) = if start == 0 { (k, v) } else { self.cache.visible(index, start + n) };
        let seen = keys.dims()[2];
        // [1, heads, n, d] as [1, kv_heads, groups * n, d]: query head h uses key/value head h / groups.
        let q = q.reshape([1, kv_heads, groups * n, dim]);
        let scores = matmul(q, keys.swap_dims(2, 3)).mul_scalar(1.0 / (dim as f64).sqrt()).reshape([1, heads, n, seen]);
        let scores = if start == 0 { scores + self.prompt_mask(n) } else { scores };
        let dtype = scores.dtype();
        let probs = softmax(scores.cast(DType::F32), 3).cast(dtype).reshape([1, kv_heads, groups * n, seen]);
        let out = matmul(probs, values).reshape([1, heads, n, dim]).swap_dims(1, 2).reshape([1, n, heads * dim]);
        attn.o_proj.forward(out)
    }

    /// RoPE on `x` [1, heads, n, d] at positions `start..start + n`: x cos + rotate_half(x) sin.
    fn rotate(&self, x: Tensor<B, 4>, start: usize) -> Tensor<B, 4> {
        let [_, _, n, dim] = x.dims();
        let half = dim / 2;
        let at = |table: &Tensor<B, 2>| table.clone().narrow(0, start, n).reshape([1, 1, n, dim]);
        let rotated = Tensor::cat(vec![x.clone().narrow(3, half, half).neg(), x.clone().narrow(3, 0, half)], 3);
        x * at(&self.cos) + rotated * at(&self.sin)
    }

    /// [1, 1, n, n]: 0 where query i may attend to key j (causal, within the window), -inf elsewhere.
    fn prompt_mask(&self, n: usize) -> Tensor<B, 4> {
        let window = self.model.config.sliding_window;
        let bias: Vec<f32> = (0..n * n).map(|k| if may_attend(k / n, k % n, window) { 0.0 } else { f32::NEG_INFINITY }).collect();
        let device = self.model.embed_tokens.weight.device();
        Tensor::<B, 4>::from_data(TensorData::new(bias, [1, 1, n, n]), (&device, DType::F32)).cast(self.cos.dtype())
    }
}
