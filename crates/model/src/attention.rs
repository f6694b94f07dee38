//! Grouped-query self-attention with RoPE and HF's causal / sliding-window mask.

use burn::tensor::{DType, Tensor, activation::softmax, backend::Backend};

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

    /// `x`: [batch, seq, hidden] -> [batch, seq, hidden]. Eager attention, as HF's reference:
    /// the [batch, heads, seq, seq] scores are materialised (softmax in f32).
    pub fn forward(&self, x: Tensor<B, 3>, ctx: &SequenceContext<B>) -> Tensor<B, 3> {
        let [batch, seq, _] = x.dims();
        let split_heads = |t: Tensor<B, 3>, heads: usize| {
            t.reshape([batch, seq, heads, self.head_dim]).swap_dims(1, 2)
        };
        let q = ctx.apply_rope(split_heads(self.q_proj.forward(x.clone()), self.num_heads));
        let k = ctx.apply_rope(split_heads(self.k_proj.forward(x.clone()), self.num_kv_heads));
        let v = split_heads(self.v_proj.forward(x), self.num_kv_heads);
        let k = self.repeat_kv(k);
        let v = self.repeat_kv(v);

        let scale = 1.0 / (self.head_dim as f64).sqrt();
        let scores = ctx.mask_scores(q.matmul(k.swap_dims(2, 3)).mul_scalar(scale));
        let dtype = scores.dtype();
        let probs = if dtype == DType::F32 {
            softmax(scores, 3)
        } else {
            softmax(scores.cast(DType::F32), 3).cast(dtype)
        };
        let out = probs.matmul(v).swap_dims(1, 2).reshape([batch, seq, self.num_heads * self.head_dim]);
        self.o_proj.forward(out)
    }

    /// [b, kv_heads, s, d] -> [b, heads, s, d], each kv head repeated for its group of query
    /// heads (HF's `repeat_kv`: head h uses kv head h / groups).
    fn repeat_kv(&self, t: Tensor<B, 4>) -> Tensor<B, 4> {
        let groups = self.num_heads / self.num_kv_heads;
        if groups == 1 {
            return t;
        }
        let [b, kv, s, d] = t.dims();
        t.unsqueeze_dim::<5>(2).repeat_dim(2, groups).reshape([b, kv * groups, s, d])
    }
}
