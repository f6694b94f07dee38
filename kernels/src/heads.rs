//! Attention's head layout: a projection's output split into (rotated, repeated) heads, and
//! attention's output merged back. On burn-flex in f32 each is one pass (`heads_flex`); elsewhere
//! burn's tensor ops, which are the reference.

use std::sync::Arc;

use burn::tensor::{DType, Int, Tensor, TensorData, backend::Backend};

use crate::{flex, heads_flex};

/// The shape of a head-layout change: `heads` heads of `head_dim` in the projection's output,
/// each repeated `groups` times in attention's layout.
#[derive(Debug, Clone, Copy)]
pub struct Heads {
    pub batch: usize,
    pub seq: usize,
    pub heads: usize,
    pub head_dim: usize,
    pub groups: usize,
}

/// RoPE's cos and sin tables in f32, [positions * head_dim] each (HF's rotate-half layout) by
/// position, and each token's position: [layouts, seq], one layout shared by every row, or
/// one per row.
#[derive(Debug)]
pub struct RopeTables {
    pub cos: Vec<f32>,
    pub sin: Vec<f32>,
    pub positions: Vec<u32>,
    pub layouts: usize,
}

impl RopeTables {
    /// cos and sin at the position of token `t` of batch row `b`.
    pub(crate) fn at(&self, b: usize, t: usize, head_dim: usize) -> (&[f32], &[f32]) {
        let seq = self.positions.len() / self.layouts;
        let at = self.positions[if self.layouts == 1 { t } else { b * seq + t }] as usize * head_dim;
        (&self.cos[at..][..head_dim], &self.sin[at..][..head_dim])
    }
}

/// Rotary position embeddings for the tokens of a micro-batch: the tables at each token's
/// position on the device (for the tensor ops), and in f32 on the host (for the one-pass kernel).
///
/// Each device table holds one row per distinct row layout: a single row, which a
/// [batch * heads, ...] view of the activations shares, when every row of the micro-batch has
/// the same positions; burn-flex runs that broadcast as a SIMD loop, where a [1, 1, seq, ...]
/// table broadcast over [batch, heads] walks a strided iterator element by element (an order
/// of magnitude slower; 9% of a step on the small preset before this layout).
#[derive(Debug, Clone)]
pub struct Rope<B: Backend> {
    /// [layouts, seq * head_dim]
    pub cos: Tensor<B, 2>,
    /// [layouts, seq * head_dim]
    pub sin: Tensor<B, 2>,
    pub tables: Arc<RopeTables>,
}

impl<B: Backend> Rope<B> {
    /// `tables` at their tokens' positions, on `device` in `dtype` (the dtype the layers compute
    /// in, as transformers casts `cos` and `sin` to the dtype of the hidden states).
    pub fn new(tables: RopeTables, head_dim: usize, device: &B::Device, dtype: DType) -> Self {
        let seq = tables.positions.len() / tables.layouts;
        let positions: Vec<i64> = tables.positions.iter().map(|&p| p as i64).collect();
        let positions = Tensor::<B, 1, Int>::from_data(TensorData::new(positions, [tables.layouts * seq]), device);
        let at_positions = |table: &[f32]| {
            let table =
                Tensor::<B, 2>::from_data(TensorData::new(table.to_vec(), [table.len() / head_dim, head_dim]), (device, DType::F32));
            table.select(0, positions.clone()).reshape([tables.layouts, seq * head_dim]).cast(dtype)
        };
        Self { cos: at_positions(&tables.cos), sin: at_positions(&tables.sin), tables: Arc::new(tables) }
    }

    /// `x`: [batch, heads, seq, head_dim] in any memory order -> x * cos + rotate_half(x) * sin,
    /// contiguous.
    pub fn apply(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let [batch, heads, seq, head_dim] = x.dims();
        // A reshape lays a transposed view out in [batch * heads, seq, head_dim] order.
        let x = x.reshape([batch * heads, seq, head_dim]);
        let half = head_dim / 2;
        let rotated = Tensor::cat(vec![x.clone().narrow(2, half, half).neg(), x.clone().narrow(2, 0, half)], 2);
        let rows = |t: Tensor<B, 3>| t.reshape([batch * heads, seq * head_dim]);
        (times_row_table(rows(x), &self.cos) + times_row_table(rows(rotated), &self.sin)).reshape([batch, heads, seq, head_dim])
    }
}

/// `x` [batch * heads, n] times `table` [layouts, n]: one row shared by all, or row b for the
/// heads of batch row b.
fn times_row_table<B: Backend>(x: Tensor<B, 2>, table: &Tensor<B, 2>) -> Tensor<B, 2> {
    let [layouts, n] = table.dims();
    if layouts == 1 {
        return x * table.clone(); // one row broadcast: burn-flex's SIMD loop
    }
    let [rows, _] = x.dims();
    (x.reshape([layouts, rows / layouts, n]) * table.clone().unsqueeze_dim::<3>(1)).reshape([rows, n])
}

/// A projection's output `x` [batch, seq, heads * head_dim] -> [batch, heads * groups, seq,
/// head_dim]: split into heads, rotated when `rope` is given, each head repeated for its group
/// of query heads (head h * groups + g is head h).
pub fn split_heads<B: Backend>(x: Tensor<B, 3>, shape: Heads, rope: Option<&Rope<B>>) -> Tensor<B, 4> {
    if flex::f32_kernels_apply::<B>(x.dtype()) {
        heads_flex::split_heads(x, shape, rope.map(|rope| Arc::clone(&rope.tables)))
    } else {
        split_heads_with_tensor_ops(x, shape, rope)
    }
}

/// Attention's output `x` [batch, heads, seq, head_dim] -> [batch, seq, heads * head_dim].
pub fn merge_heads<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 3> {
    if flex::f32_kernels_apply::<B>(x.dtype()) { heads_flex::merge_heads(x) } else { merge_heads_with_tensor_ops(x) }
}

fn split_heads_with_tensor_ops<B: Backend>(x: Tensor<B, 3>, shape: Heads, rope: Option<&Rope<B>>) -> Tensor<B, 4> {
    let Heads { batch, seq, heads, head_dim, groups } = shape;
    let x = x.reshape([batch, seq, heads, head_dim]).swap_dims(1, 2);
    let x = match rope {
        Some(rope) => rope.apply(x),
        None => x,
    };
    repeat_kv(x, groups)
}

fn merge_heads_with_tensor_ops<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 3> {
    let [batch, heads, seq, head_dim] = x.dims();
    x.swap_dims(1, 2).reshape([batch, seq, heads * head_dim])
}

/// [b, kv_heads, s, d] -> [b, kv_heads * groups, s, d], each kv head repeated for its group of
/// query heads (HF's `repeat_kv`: head h uses kv head h / groups).
pub(crate) fn repeat_kv<B: Backend>(x: Tensor<B, 4>, groups: usize) -> Tensor<B, 4> {
    if groups == 1 {
        return x;
    }
    let [b, kv, s, d] = x.dims();
    x.unsqueeze_dim::<5>(2).repeat_dim(2, groups).reshape([b, kv * groups, s, d])
}

#[cfg(test)]
mod tests {
    use burn::backend::{Autodiff, Flex};

    use super::*;

    type Ad = Autodiff<Flex>;

    fn values(n: usize, seed: usize) -> Vec<f32> {
        (0..n).map(|i| ((i * 7919 + seed * 104729) % 211) as f32 / 37.0 - 2.8).collect()
    }

    /// HF's RoPE tables (theta 10000) for two rows of `seq` tokens: the first packs two
    /// examples (the second starting at 2), the second is one example.
    fn packed_rope(seq: usize, head_dim: usize) -> Rope<Ad> {
        let inverse_frequencies: Vec<f32> = (0..head_dim / 2).map(|k| 1.0 / 10000f32.powf((2 * k) as f32 / head_dim as f32)).collect();
        let angles =
            || (0..seq).flat_map(|p| [&inverse_frequencies, &inverse_frequencies].into_iter().flatten().map(move |f| p as f32 * f));
        let positions = [vec![0, 1], (0..seq as u32 - 2).collect(), (0..seq as u32).collect()].concat();
        let tables = RopeTables { cos: angles().map(f32::cos).collect(), sin: angles().map(f32::sin).collect(), positions, layouts: 2 };
        Rope::new(tables, head_dim, &Default::default(), DType::F32)
    }

    /// burn-flex's one-pass head kernels and burn's tensor ops agree: the forward to the bit
    /// (the same f32 operations), the gradient within rounding (sums in another order).
    #[test]
    fn flex_head_kernels_match_tensor_ops() {
        let (batch, seq, head_dim) = (2, 5, 8);
        let rope = packed_rope(seq, head_dim);
        for (heads, groups, rotated) in [(6, 1, true), (2, 3, true), (2, 3, false)] {
            let shape = Heads { batch, seq, heads, head_dim, groups };
            let input = values(batch * seq * heads * head_dim, heads + groups);
            let weight = values(batch * heads * groups * seq * head_dim, 7);
            let run = |kernel: bool| {
                let x = Tensor::<Ad, 3>::from_data(TensorData::new(input.clone(), [batch, seq, heads * head_dim]), &Default::default())
                    .require_grad();
                let rope = rotated.then_some(&rope);
                let split = if kernel {
                    heads_flex::split_heads(x.clone(), shape, rope.map(|rope| Arc::clone(&rope.tables)))
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
