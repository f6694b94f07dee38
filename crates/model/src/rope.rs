//! Rotary position embeddings in Hugging Face's rotate-half layout, and the attention mask: what
//! every layer of one forward pass shares for a micro-batch. Both come from where each row's
//! examples start (flash-attention's varlen `cu_seqlens`, per row): positions restart at 0 with
//! each example, and each example attends only to itself, causally, within Mistral's sliding
//! window counted from its own start. A row of one example is the plain causal case.
//!
//! Only the starts' positions and example numbers go to the device (a few values per token); the
//! tables and the mask are made there with tensor ops, so any backend builds them. Tables are
//! computed in f32 and cast to the dtype the layers compute in, as transformers casts `cos` and
//! `sin` to the dtype of the hidden states.

use burn::tensor::{DType, Int, Tensor, TensorData, backend::Backend};
use shard_kernels::{Rope, RopeTables};

use crate::MistralConfig;

/// cos/sin at each token's position and the block-diagonal causal (sliding-window) mask.
///
/// Each holds one row per distinct row layout: a single row, which a [batch * heads, ...] view
/// of the activations shares, when every row of the micro-batch has the same starts (unpacked
/// batches, one packed row); burn-flex runs that broadcast as a SIMD loop, where a
/// [1, 1, seq, ...] table broadcast over [batch, heads] walks a strided iterator element by
/// element (an order of magnitude slower; 9% of a step on the small preset before this layout).
#[derive(Debug, Clone)]
pub struct SequenceContext<B: Backend> {
    rope: Rope<B>,
    /// [layouts, seq * seq]: 0 where query i may attend to key j, -inf elsewhere.
    mask_bias: Tensor<B, 2>,
}

impl<B: Backend> SequenceContext<B> {
    /// Rows of `seq` tokens whose examples start at `starts` (one list per row, each from 0),
    /// for layers computing in `dtype` (f32 or bf16).
    pub fn new(cfg: &MistralConfig, seq: usize, starts: &[Vec<u32>], device: &B::Device, dtype: DType) -> Self {
        let layouts = if starts.iter().all(|s| s == &starts[0]) { &starts[..1] } else { starts };
        let (positions, examples) = positions_and_examples(seq, layouts);
        let (cos, sin) = rope_tables(cfg.head_dim, cfg.rope_theta, seq);
        let examples: Vec<i64> = examples.iter().map(|&v| v as i64).collect();
        let examples = Tensor::<B, 2, Int>::from_data(TensorData::new(examples, [layouts.len(), seq]), device);
        Self {
            rope: Rope::new(RopeTables { cos, sin, positions, layouts: layouts.len() }, cfg.head_dim, device, dtype),
            mask_bias: mask_bias(examples, cfg.sliding_window).cast(dtype),
        }
    }

    /// Rows of one example each.
    pub fn unpacked(cfg: &MistralConfig, seq: usize, device: &B::Device, dtype: DType) -> Self {
        Self::new(cfg, seq, &[vec![0]], device, dtype)
    }

    /// RoPE at each token's position.
    pub fn rope(&self) -> &Rope<B> {
        &self.rope
    }

    /// `scores`: [batch, heads, seq, seq] (contiguous) -> scores + the mask's bias.
    pub fn mask_scores(&self, scores: Tensor<B, 4>) -> Tensor<B, 4> {
        let [batch, heads, seq, _] = scores.dims();
        let biased = self.mask_bias.clone();
        let [layouts, _] = biased.dims();
        let scores = scores.reshape([batch * heads, seq * seq]);
        let biased = if layouts == 1 {
            scores + biased // one row broadcast: burn-flex's SIMD loop
        } else {
            (scores.reshape([batch, heads, seq * seq]) + biased.unsqueeze_dim::<3>(1)).reshape([batch * heads, seq * seq])
        };
        biased.reshape([batch, heads, seq, seq])
    }
}

/// Per row and token: its position in its example, and which example of the row it is in
/// (padding after the last example belongs to it; causal attention keeps it from the tokens
/// before it).
fn positions_and_examples(seq: usize, starts: &[Vec<u32>]) -> (Vec<u32>, Vec<u32>) {
    let mut positions = Vec::with_capacity(starts.len() * seq);
    let mut examples = Vec::with_capacity(starts.len() * seq);
    for row in starts {
        assert!(row.first() == Some(&0) && row.is_sorted(), "a row's examples start at 0, in order: {row:?}");
        let mut example = 0;
        for t in 0..seq as u32 {
            while example + 1 < row.len() && row[example + 1] <= t {
                example += 1;
            }
            positions.push(t - row[example]);
            examples.push(example as u32);
        }
    }
    (positions, examples)
}

/// [layouts, seq * seq] in f32: 0 where query i may attend to key j (the same example, and
/// [`may_attend`] by their distance), -inf elsewhere; made on the device from the example number
/// of each token, [layouts, seq].
fn mask_bias<B: Backend>(examples: Tensor<B, 2, Int>, sliding_window: Option<usize>) -> Tensor<B, 2> {
    let [layouts, seq] = examples.dims();
    let device = examples.device();
    let t = Tensor::<B, 1, Int>::arange(0..seq as i64, &device);
    let back = t.clone().reshape([seq, 1]).expand([seq, seq]) - t.reshape([1, seq]).expand([seq, seq]);
    let mut near = back.clone().greater_equal_elem(0);
    if let Some(window) = sliding_window {
        near = near.bool_and(back.lower_elem(window as i64));
    }
    let by_query = examples.clone().reshape([layouts, seq, 1]).expand([layouts, seq, seq]);
    let by_key = examples.reshape([layouts, 1, seq]).expand([layouts, seq, seq]);
    let allowed = by_query.equal(by_key).bool_and(near.unsqueeze::<3>().expand([layouts, seq, seq]));
    Tensor::<B, 3>::zeros([layouts, seq, seq], (&device, DType::F32))
        .mask_fill(allowed.bool_not(), f32::NEG_INFINITY)
        .reshape([layouts, seq * seq])
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

    /// Each example of a packed row sees itself only, causally, within the window counted from
    /// its own start; a row of one example (the other row here) is HF's causal mask; positions
    /// restart at 0 with each example.
    #[test]
    fn packed_rows_mask_and_positions_per_example() {
        let (seq, window) = (10, 3);
        let starts = [vec![0, 3, 8], vec![0]];
        let ctx = SequenceContext::<Flex>::new(&config(Some(window)), seq, &starts, &Default::default(), DType::F32);
        let bias = ctx.mask_bias.into_data().into_vec::<f32>().unwrap();
        for (r, row) in starts.iter().enumerate() {
            let example = |t: usize| row.iter().rposition(|&s| s as usize <= t).unwrap();
            for i in 0..seq {
                for j in 0..seq {
                    let allowed = example(i) == example(j) && may_attend(i, j, Some(window));
                    let expected = if allowed { 0.0 } else { f32::NEG_INFINITY };
                    assert_eq!(bias[(r * seq + i) * seq + j], expected, "row {r}: query {i}, key {j}");
                }
            }
        }
        assert_eq!(ctx.rope.tables.positions, [vec![0, 1, 2, 0, 1, 2, 3, 4, 0, 1], (0..10).collect()].concat());
        // One layout shared by every row when all rows have the same starts.
        let shared = SequenceContext::<Flex>::new(&config(None), seq, &[vec![0], vec![0]], &Default::default(), DType::F32);
        assert_eq!((shared.mask_bias.dims(), shared.rope.tables.layouts), ([1, seq * seq], 1));
    }

    /// The RoPE tables of a packed example are those of the example alone.
    #[test]
    fn rope_restarts_with_each_example() {
        let cfg = config(None);
        let packed = SequenceContext::<Flex>::new(&cfg, 7, &[vec![0, 4], vec![0]], &Default::default(), DType::F32);
        let alone = SequenceContext::<Flex>::unpacked(&cfg, 3, &Default::default(), DType::F32);
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
