//! Rotary position embeddings in Hugging Face's rotate-half layout, and the attention mask: what
//! every layer of one forward pass shares for a given sequence length. Tables are computed in f32
//! and cast to the dtype the layers compute in, as transformers casts `cos` and `sin` to the
//! dtype of the hidden states.

use std::sync::Arc;

use burn::tensor::{DType, Tensor, TensorData, backend::Backend};

use crate::MistralConfig;
use crate::heads_flex::RopeTables;

/// cos/sin tables and the causal (sliding-window) mask for sequences of one length.
///
/// Each is one row that a [batch * heads, ...] view of the activations shares: burn-flex runs
/// that broadcast as a SIMD loop, where a [1, 1, seq, ...] table broadcast over [batch, heads]
/// walks a strided iterator element by element (an order of magnitude slower; 9% of a step on
/// the small preset before this layout).
#[derive(Debug, Clone)]
pub struct SequenceContext<B: Backend> {
    /// [1, seq * head_dim]
    cos: Tensor<B, 2>,
    /// [1, seq * head_dim]
    sin: Tensor<B, 2>,
    /// [1, seq * seq]: 0 where query i may attend to key j, -inf elsewhere.
    mask_bias: Tensor<B, 2>,
    /// The cos and sin tables as f32 values, for the one-pass head kernels on burn-flex.
    tables: Arc<RopeTables>,
}

impl<B: Backend> SequenceContext<B> {
    /// Tables for layers computing in `dtype` (f32 or bf16).
    pub fn new(cfg: &MistralConfig, seq_len: usize, device: &B::Device, dtype: DType) -> Self {
        let (cos, sin) = rope_tables(cfg.head_dim, cfg.rope_theta, seq_len);
        let mask = attention_mask_bias(seq_len, cfg.sliding_window);
        let row = |values: &[f32]| {
            Tensor::<B, 2>::from_data(TensorData::new(values.to_vec(), [1, values.len()]), (device, DType::F32)).cast(dtype)
        };
        Self { cos: row(&cos), sin: row(&sin), mask_bias: row(&mask), tables: Arc::new(RopeTables { cos, sin }) }
    }

    /// RoPE's tables in f32 (for the one-pass head kernels, `heads_flex`).
    pub(crate) fn tables(&self) -> Arc<RopeTables> {
        Arc::clone(&self.tables)
    }

    /// `x`: [batch, heads, seq, head_dim] in any memory order -> x * cos + rotate_half(x) * sin,
    /// contiguous.
    pub fn apply_rope(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let [batch, heads, seq, head_dim] = x.dims();
        // A reshape lays a transposed view out in [batch * heads, seq, head_dim] order.
        let x = x.reshape([batch * heads, seq, head_dim]);
        let half = head_dim / 2;
        let rotated = Tensor::cat(vec![x.clone().narrow(2, half, half).neg(), x.clone().narrow(2, 0, half)], 2);
        let rows = |t: Tensor<B, 3>| t.reshape([batch * heads, seq * head_dim]);
        (rows(x) * self.cos.clone() + rows(rotated) * self.sin.clone()).reshape([batch, heads, seq, head_dim])
    }

    /// `scores`: [batch, heads, seq, seq] (contiguous) -> scores + the mask's bias.
    pub fn mask_scores(&self, scores: Tensor<B, 4>) -> Tensor<B, 4> {
        let [batch, heads, seq, _] = scores.dims();
        (scores.reshape([batch * heads, seq * seq]) + self.mask_bias.clone()).reshape([batch, heads, seq, seq])
    }
}

/// HF's default RoPE, computed in f32 as transformers does:
/// inv_freq[k] = 1 / theta^(2k / dim), angle = pos * inv_freq, tables repeated over both halves.
fn rope_tables(head_dim: usize, theta: f64, seq_len: usize) -> (Vec<f32>, Vec<f32>) {
    let inv_freq: Vec<f32> = (0..head_dim / 2).map(|k| 1.0 / (theta as f32).powf((2 * k) as f32 / head_dim as f32)).collect();
    let mut cos = Vec::with_capacity(seq_len * head_dim);
    let mut sin = Vec::with_capacity(seq_len * head_dim);
    for pos in 0..seq_len {
        for _half in 0..2 {
            for f in &inv_freq {
                let angle = pos as f32 * f;
                cos.push(angle.cos());
                sin.push(angle.sin());
            }
        }
    }
    (cos, sin)
}

/// Query i sees key j iff j <= i and (no window, or i - j < window): HF's definition.
pub fn may_attend(i: usize, j: usize, sliding_window: Option<usize>) -> bool {
    j <= i && sliding_window.is_none_or(|w| i - j < w)
}

fn attention_mask_bias(seq_len: usize, sliding_window: Option<usize>) -> Vec<f32> {
    let mut bias = Vec::with_capacity(seq_len * seq_len);
    for i in 0..seq_len {
        for j in 0..seq_len {
            bias.push(if may_attend(i, j, sliding_window) { 0.0 } else { f32::NEG_INFINITY });
        }
    }
    bias
}

#[cfg(test)]
mod tests {
    use super::may_attend;

    #[test]
    fn sliding_window_is_hf_definition() {
        assert!(may_attend(5, 5, Some(3)));
        assert!(may_attend(5, 3, Some(3)));
        assert!(!may_attend(5, 2, Some(3)));
        assert!(!may_attend(2, 3, None));
        assert!(may_attend(100, 0, None));
    }
}
