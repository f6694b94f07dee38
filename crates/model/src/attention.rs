//! Grouped-query self-attention with RoPE and HF's causal / sliding-window mask, per example of
//! a packed row.

use burn::tensor::{DType, Tensor, activation::softmax, backend::Backend};

use crate::heads_flex::{self, Heads};
use crate::{Linear, MistralConfig, SequenceContext};
use crate::{flex, rows_flex};

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
        let groups = self.num_heads / self.num_kv_heads;
        let q = self.split_heads(self.q_proj.forward(x.clone()), self.num_heads, 1, Some(ctx));
        let k = self.split_heads(self.k_proj.forward(x.clone()), self.num_kv_heads, groups, Some(ctx));
        let v = self.split_heads(self.v_proj.forward(x), self.num_kv_heads, groups, None);

        let scale = 1.0 / (self.head_dim as f64).sqrt();
        let scores = ctx.mask_scores(q.matmul(k.swap_dims(2, 3)).mul_scalar(scale));
        let dtype = scores.dtype();
        let scores = if dtype == DType::F32 { scores } else { scores.cast(DType::F32) };
        let probs = if flex::f32_kernels_apply::<B>(dtype) { rows_flex::softmax_last(scores) } else { softmax(scores, 3) };
        let probs = if dtype == DType::F32 { probs } else { probs.cast(dtype) };
        self.o_proj.forward(self.merge_heads(probs.matmul(v)))
    }

    /// A projection's output [b, s, heads * d] -> [b, heads * groups, s, d]: split into heads,
    /// rotated (RoPE) when `rope` is given, each head repeated for its group of query heads.
    fn split_heads(&self, t: Tensor<B, 3>, heads: usize, groups: usize, rope: Option<&SequenceContext<B>>) -> Tensor<B, 4> {
        let [batch, seq, _] = t.dims();
        let shape = Heads { batch, seq, heads, head_dim: self.head_dim, groups };
        if flex::f32_kernels_apply::<B>(t.dtype()) {
            heads_flex::split_heads(t, shape, rope.map(SequenceContext::tables))
        } else {
            split_heads_with_tensor_ops(t, shape, rope)
        }
    }

    /// Attention's output [b, heads, s, d] -> [b, s, heads * d].
    fn merge_heads(&self, t: Tensor<B, 4>) -> Tensor<B, 3> {
        if flex::f32_kernels_apply::<B>(t.dtype()) { heads_flex::merge_heads(t) } else { merge_heads_with_tensor_ops(t) }
    }
}

fn split_heads_with_tensor_ops<B: Backend>(t: Tensor<B, 3>, shape: Heads, rope: Option<&SequenceContext<B>>) -> Tensor<B, 4> {
    let Heads { batch, seq, heads, head_dim, groups } = shape;
    let t = t.reshape([batch, seq, heads, head_dim]).swap_dims(1, 2);
    let t = match rope {
        Some(ctx) => ctx.apply_rope(t),
        None => t,
    };
    repeat_kv(t, groups)
}

fn merge_heads_with_tensor_ops<B: Backend>(t: Tensor<B, 4>) -> Tensor<B, 3> {
    let [batch, heads, seq, head_dim] = t.dims();
    t.swap_dims(1, 2).reshape([batch, seq, heads * head_dim])
}

/// [b, kv_heads, s, d] -> [b, kv_heads * groups, s, d], each kv head repeated for its group of
/// query heads (HF's `repeat_kv`: head h uses kv head h / groups).
fn repeat_kv<B: Backend>(t: Tensor<B, 4>, groups: usize) -> Tensor<B, 4> {
    if groups == 1 {
        return t;
    }
    let [b, kv, s, d] = t.dims();
    t.unsqueeze_dim::<5>(2).repeat_dim(2, groups).reshape([b, kv * groups, s, d])
}

#[cfg(test)]
mod tests {
    use burn::backend::{Autodiff, Flex};
    use burn::tensor::TensorData;

    use super::*;

    type Ad = Autodiff<Flex>;

    fn values(n: usize, seed: usize) -> Vec<f32> {
        (0..n).map(|i| ((i * 7919 + seed * 104729) % 211) as f32 / 37.0 - 2.8).collect()
    }

    /// burn-flex's one-pass head kernels and burn's tensor ops agree: the forward to the bit
    /// (the same f32 operations), the gradient within rounding (sums in another order).
    #[test]
    fn flex_head_kernels_match_tensor_ops() {
        let cfg = serde_json::json!({
            "model_type": "mistral", "vocab_size": 16, "hidden_size": 48, "intermediate_size": 64, "head_dim": 8,
            "num_hidden_layers": 1, "num_attention_heads": 6, "num_key_value_heads": 2, "rms_norm_eps": 1e-5,
        });
        let cfg = MistralConfig::from_json(&cfg, std::path::Path::new("config.json")).unwrap();
        let (batch, seq) = (2, 5);
        let ctx = SequenceContext::<Ad>::new(&cfg, seq, &[vec![0, 2], vec![0]], &Default::default(), DType::F32);
        for (heads, groups, rotated) in [(6, 1, true), (2, 3, true), (2, 3, false)] {
            let shape = Heads { batch, seq, heads, head_dim: cfg.head_dim, groups };
            let input = values(batch * seq * heads * cfg.head_dim, heads + groups);
            let weight = values(batch * heads * groups * seq * cfg.head_dim, 7);
            let run = |kernel: bool| {
                let x = Tensor::<Ad, 3>::from_data(TensorData::new(input.clone(), [batch, seq, heads * cfg.head_dim]), &Default::default())
                    .require_grad();
                let rope = rotated.then_some(&ctx);
                let split = if kernel {
                    heads_flex::split_heads(x.clone(), shape, rope.map(SequenceContext::tables))
                } else {
                    split_heads_with_tensor_ops(x.clone(), shape, rope)
                };
                let w = Tensor::<Ad, 4>::from_data(TensorData::new(weight.clone(), split.dims()), &Default::default());
                let merged =
                    if kernel { heads_flex::merge_heads(split.clone() * w) } else { merge_heads_with_tensor_ops(split.clone() * w) };
                let grads = (merged.clone() * merged.clone()).sum().backward();
                let grad = x.grad(&grads).unwrap().into_data().into_vec::<f32>().unwrap();
                (split.into_data().into_vec::<f32>().unwrap(), merged.into_data().into_vec::<f32>().unwrap(), grad)
            };
            let ((split, merged, grad), (split_ops, merged_ops, grad_ops)) = (run(true), run(false));
            assert_eq!(split, split_ops, "split, {heads} heads x {groups}");
            assert_eq!(merged, merged_ops, "merged, {heads} heads x {groups}");
            let worst = grad.iter().zip(&grad_ops).map(|(a, b)| (a - b).abs() / b.abs().max(1.0)).fold(0.0, f32::max);
            assert!(worst < 1e-6, "gradients differ by {worst}, {heads} heads x {groups}");
        }
    }
}
