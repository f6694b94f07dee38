//! Grouped-query self-attention with RoPE and HF's causal / sliding-window mask, per example of
//! a packed row.

use burn::tensor::{Tensor, backend::Backend};
use shard_kernels::{Heads, merge_heads, split_heads};

use crate::{Linear, MistralConfig, SequenceContext};

#[derive(Debug, Clone)]
pub struct Attention<B: Backend> {
    pub q_proj: Linear<B>,
    pub k_proj: Linear<B>,
    pub v_proj: Linear<B>,
    pub o_proj: Linear<B>,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
}

impl<B: Backend> Attention<B> {
    pub fn new(cfg: &MistralConfig, q: Linear<B>, k: Linear<B>, v: Linear<B>, o: Linear<B>) -> Self {
        Self {
            q_proj: q,
            k_proj: k,
            v_proj: v,
            o_proj: o,
            num_heads: cfg.num_attention_heads,
            num_kv_heads: cfg.num_key_value_heads,
            head_dim: cfg.head_dim,
        }
    }

    /// `x`: [batch, seq, hidden] -> [batch, seq, hidden], attending as `ctx` says: fused by
    /// default (no [seq, seq] scores), or eager as HF's reference (the [batch, heads, seq, seq]
    /// scores materialised, softmax in f32). Each head is rotated (RoPE) as it is split out.
    pub fn forward(&self, x: Tensor<B, 3>, ctx: &SequenceContext<B>) -> Tensor<B, 3> {
        let [batch, seq, _] = x.dims();
        let heads = |heads, groups| Heads { batch, seq, heads, head_dim: self.head_dim, groups };
        let kv_repeats = ctx.kv_repeats(self.num_heads / self.num_kv_heads);
        let q = split_heads(self.q_proj.forward(x.clone()), heads(self.num_heads, 1), Some(ctx.rope()));
        let k = split_heads(self.k_proj.forward(x.clone()), heads(self.num_kv_heads, kv_repeats), Some(ctx.rope()));
        let v = split_heads(self.v_proj.forward(x), heads(self.num_kv_heads, kv_repeats), None);
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        self.o_proj.forward(merge_heads(ctx.attend(q, k, v, scale)))
    }
}
