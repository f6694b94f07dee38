//! Rotary position embeddings in Hugging Face's rotate-half layout, and which keys each query
//! sees: what every layer of one forward pass shares for a micro-batch. Both come from where each
//! row's examples start (flash-attention's varlen `cu_seqlens`, per row): positions restart at 0
//! with each example, and each example attends only to itself, causally, within Mistral's sliding
//! window counted from its own start. A row of one example is the plain causal case.
//!
//! Only the positions go to the device for RoPE (one value per token); the tables are made there
//! with tensor ops, so any backend builds them. Tables are computed in f32 and cast to the dtype
//! the layers compute in, as transformers casts `cos` and `sin` to the dtype of the hidden states.

use burn::tensor::{DType, Tensor, backend::Backend};
use shard_core::AttentionPath;
use shard_kernels::{AttentionLayout, EagerMask, Rope, RopeTables, eager_attention_masked, fused_attention};

use crate::MistralConfig;

/// cos/sin at each token's position, and the attention over the rows' examples: the fused op
/// with the rows' [`AttentionLayout`], or the eager one with its [seq, seq] mask made once for
/// every layer.
///
/// Each table holds one row per distinct row layout: a single row, which a [batch * heads, ...]
/// view of the activations shares, when every row of the micro-batch has the same starts
/// (unpacked batches, one packed row); burn-flex runs that broadcast as a SIMD loop, where a
/// [1, 1, seq, ...] table broadcast over [batch, heads] walks a strided iterator element by
/// element (an order of magnitude slower; 9% of a step on the small preset before this layout).
#[derive(Debug, Clone)]
pub struct SequenceContext<B: Backend> {
    rope: Rope<B>,
    attention: RowAttention<B>,
}

/// How the layers attend over the micro-batch's rows.
#[derive(Debug, Clone)]
enum RowAttention<B: Backend> {
    Fused(AttentionLayout),
    Eager(EagerMask<B>),
}

impl<B: Backend> SequenceContext<B> {
    /// Rows of `seq` tokens whose examples start at `starts` (one list per row, each from 0),
    /// for layers computing in `dtype` (f32 or bf16), attending by `path`.
    pub fn new(cfg: &MistralConfig, seq: usize, starts: &[Vec<u32>], device: &B::Device, dtype: DType, path: AttentionPath) -> Self {
        let layout = AttentionLayout::new(seq, starts, cfg.sliding_window);
        let rows = if layout.layouts == 1 { &starts[..1] } else { starts };
        let (cos, sin) = rope_tables(cfg.head_dim, cfg.rope_theta, seq);
        let tables = RopeTables { cos, sin, positions: positions(seq, rows), layouts: rows.len() };
        let attention = match path {
            AttentionPath::Fused => RowAttention::Fused(layout),
            AttentionPath::Eager => RowAttention::Eager(EagerMask::new(&layout, device, dtype)),
        };
        Self { rope: Rope::new(tables, cfg.head_dim, device, dtype), attention }
    }

    /// RoPE at each token's position.
    pub fn rope(&self) -> &Rope<B> {
        &self.rope
    }

    /// How many times k and v are to be repeated for [`Self::attend`], for query heads in
    /// `groups`: the eager path reads them repeated (which the head split does in its one pass),
    /// the fused one reads each kv head for its group.
    pub fn kv_repeats(&self, groups: usize) -> usize {
        match self.attention {
            RowAttention::Fused(_) => 1,
            RowAttention::Eager(_) => groups,
        }
    }

    /// Attention of q [batch, heads, seq, head_dim] over k and v (repeated [`Self::kv_repeats`]
    /// times), scores scaled by `scale`: [batch, heads, seq, head_dim].
    pub fn attend(&self, q: Tensor<B, 4>, k: Tensor<B, 4>, v: Tensor<B, 4>, scale: f64) -> Tensor<B, 4> {
        match &self.attention {
            RowAttention::Fused(layout) => fused_attention(q, k, v, layout, scale),
            RowAttention::Eager(mask) => eager_attention_masked(q, k, v, mask, scale),
        }
    }
}

/// Per row and token, its position in its example (padding after the last example belongs to it).
fn positions(seq: usize, starts: &[Vec<u32>]) -> Vec<u32> {
    let mut positions = Vec::with_capacity(starts.len() * seq);
    for row in starts {
        let mut example = 0;
        for t in 0..seq as u32 {
            while example + 1 < row.len() && row[example + 1] <= t {
                example += 1;
            }
            positions.push(t - row[example]);
        }
    }
    positions
}

/// HF's default RoPE, computed in f32 as transformers does:
/// inv_freq[k] = 1 / theta^(2k / dim), angle = pos * inv_freq, tables repeated over both halves.
pub(crate) fn rope_tables(head_dim: usize, theta: f64, seq_len: usize) -> (Vec<f32>, Vec<f32>) {
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

#[cfg(test)]
mod tests {
    use burn::backend::Flex;

    use super::*;

    fn config(sliding_window: Option<usize>) -> MistralConfig {
        let cfg = serde_json::json!({
            "model_type": "mistral", "vocab_size": 16, "hidden_size": 16, "intermediate_size": 32, "head_dim": 4,
            "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 2, "rms_norm_eps": 1e-5,
            "sliding_window": sliding_window,
        });
        MistralConfig::from_json(&cfg, std::path::Path::new("config.json")).unwrap()
    }

    /// Positions restart at 0 with each example; one layout for rows of the same starts. (Which
    /// keys each query sees is `shard_kernels::AttentionLayout`'s, tested there.)
    #[test]
    fn packed_rows_positions_per_example() {
        let seq = 10;
        let ctx = SequenceContext::<Flex>::new(
            &config(Some(3)),
            seq,
            &[vec![0, 3, 8], vec![0]],
            &Default::default(),
            DType::F32,
            AttentionPath::Fused,
        );
        assert_eq!(ctx.rope.tables.positions, [vec![0, 1, 2, 0, 1, 2, 3, 4, 0, 1], (0..10).collect()].concat());
        let shared =
            SequenceContext::<Flex>::new(&config(None), seq, &[vec![0], vec![0]], &Default::default(), DType::F32, AttentionPath::Eager);
        assert_eq!(shared.rope.tables.layouts, 1);
    }

    /// The RoPE tables of a packed example are those of the example alone.
    #[test]
    fn rope_restarts_with_each_example() {
        let cfg = config(None);
        let packed = SequenceContext::<Flex>::new(&cfg, 7, &[vec![0, 4], vec![0]], &Default::default(), DType::F32, AttentionPath::Fused);
        let alone = SequenceContext::<Flex>::new(&cfg, 3, &[vec![0]], &Default::default(), DType::F32, AttentionPath::Fused);
        let d = cfg.head_dim;
        let cos = packed.rope.cos.into_data().into_vec::<f32>().unwrap();
        assert_eq!(cos[4 * d..7 * d], alone.rope.cos.into_data().into_vec::<f32>().unwrap()[..]);
        assert_eq!(cos[..3 * d], cos[7 * d..10 * d], "row 1 from 0");
    }

    #[test]
    fn sliding_window_is_hf_definition() {
        assert!(may_attend(5, 5, Some(3)));
        assert!(may_attend(5, 3, Some(3)));
        assert!(!may_attend(5, 2, Some(3)));
        assert!(!may_attend(2, 3, None));
        assert!(may_attend(100, 0, None));
    }
}
