//! The fused attention on burn-flex, for f32 ([`crate::fused_attention`]): FlashAttention-2.
//!
//! Forward: each tile of queries of a head meets the tiles of keys it can see (whole tiles before
//! the example's or the window's first key, or after the tile's last query, are skipped) with an
//! online softmax, and keeps the output and each query's log-sum-exp. Backward: D = rowsum(dO * O);
//! then one pass per tile of queries for dq, and one per tile of keys for dk and dv over the
//! queries that see it, summed over the kv head's group of query heads; both recompute the
//! probabilities from the log-sum-exp. Memory beyond q, k, v and the output is O(seq) per head
//! plus one tile of scores per thread. rayon runs the heads (x tiles) in parallel; the tiles'
//! products are the gemm crate's kernels (SIMD), as burn-flex's matmul.

use std::ops::Range;
use std::sync::Arc;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops};
use burn::backend::flex::{Flex, FlexTensor};
use burn::tensor::{DType, Tensor, TensorData, backend::Backend};
use rayon::prelude::*;

use crate::{AttentionLayout, flex};

/// Queries per tile and keys per tile: with head_dim 128 a tile of queries, one of keys, one of
/// values and the scores between them take 112 KiB, in a core's L2 cache.
const QUERY_TILE: usize = 64;
const KEY_TILE: usize = 64;

/// q [batch, heads, seq, head_dim], k and v [batch, kv_heads, seq, head_dim], f32.
pub(crate) fn fused_attention<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    layout: &AttentionLayout,
    scale: f64,
) -> Tensor<B, 4> {
    let layout = Arc::new(layout.clone());
    flex::with_backward_n([q, k, v], FusedAttention, |[q, k, v]| {
        let (q, k, v) = (f32_contiguous(&q), f32_contiguous(&k), f32_contiguous(&v));
        let heads = HeadShape::of(&q, &k);
        let scale = scale as f32;
        let (output, lse) = forward(&heads, slice(&q), slice(&k), slice(&v), &layout, scale);
        let output = FlexTensor::from_data(TensorData::new(output, q.layout().shape().clone()));
        (output.clone(), Saved { q, k, v, output, lse, layout, scale })
    })
}

/// The dimensions of one call: q's [batch, heads, seq, head_dim] and k's kv_heads.
#[derive(Debug, Clone, Copy)]
struct HeadShape {
    heads: usize,
    kv_heads: usize,
    seq: usize,
    head_dim: usize,
}

impl HeadShape {
    fn of(q: &FlexTensor, k: &FlexTensor) -> Self {
        let (q, k) = (q.layout().shape(), k.layout().shape());
        Self { heads: q[1], kv_heads: k[1], seq: q[2], head_dim: q[3] }
    }

    fn groups(&self) -> usize {
        self.heads / self.kv_heads
    }

    /// The [seq, head_dim] block of head `index` (of the flattened [batch, heads] or [batch, kv_heads]).
    fn head<'a>(&self, values: &'a [f32], index: usize) -> &'a [f32] {
        &values[index * self.seq * self.head_dim..][..self.seq * self.head_dim]
    }

    /// The kv head that query head `index` (of the flattened [batch, heads]) reads.
    fn kv_of(&self, index: usize) -> usize {
        let (b, h) = (index / self.heads, index % self.heads);
        b * self.kv_heads + h / self.groups()
    }
}

fn f32_contiguous(tensor: &FlexTensor) -> FlexTensor {
    assert_eq!(tensor.dtype(), DType::F32, "the fused attention kernel takes f32");
    tensor.to_contiguous()
}

fn slice(tensor: &FlexTensor) -> &[f32] {
    tensor.as_slice::<f32>().expect("contiguous")
}

/// The output [batch, heads, seq, head_dim] and each query's log-sum-exp [batch, heads, seq].
fn forward(shape: &HeadShape, q: &[f32], k: &[f32], v: &[f32], layout: &AttentionLayout, scale: f32) -> (Vec<f32>, Vec<f32>) {
    let HeadShape { heads, seq, head_dim: d, .. } = *shape;
    let mut output = vec![0f32; q.len()];
    let mut lse = vec![0f32; q.len() / d];
    output.par_chunks_mut(seq * d).zip(lse.par_chunks_mut(seq)).enumerate().for_each(|(index, (output, lse))| {
        let first_key = layout.row(index / heads);
        let (q, k, v) = (shape.head(q, index), shape.head(k, shape.kv_of(index)), shape.head(v, shape.kv_of(index)));
        output.par_chunks_mut(QUERY_TILE * d).zip(lse.par_chunks_mut(QUERY_TILE)).enumerate().for_each_init(
            || vec![0f32; QUERY_TILE * KEY_TILE],
            |scores, (tile, (output, lse))| {
                let queries = tile * QUERY_TILE..tile * QUERY_TILE + lse.len();
                forward_tile(Tile { queries, first_key, d, scale }, q, k, v, scores, output, lse);
            },
        );
    });
    (output, lse)
}

/// A tile of queries of one head: their positions, which keys each sees, head_dim and the scale.
#[derive(Clone)]
struct Tile<'a> {
    queries: Range<usize>,
    first_key: &'a [i32],
    d: usize,
    scale: f32,
}

impl Tile<'_> {
    /// The tiles of keys that some query of this tile sees: from the first query's first key to
    /// the last query, in steps of KEY_TILE.
    fn key_tiles(&self) -> impl Iterator<Item = Range<usize>> {
        let (start, end) = (self.first_key[self.queries.start] as usize, self.queries.end);
        (start..end).step_by(KEY_TILE).map(move |j| j..(j + KEY_TILE).min(end))
    }

    /// The keys of `keys` that query `i` sees, as offsets into the tile of keys.
    fn visible(&self, i: usize, keys: &Range<usize>) -> Range<usize> {
        let start = (self.first_key[i] as usize).max(keys.start);
        let end = (i + 1).min(keys.end);
        if start < end { start - keys.start..end - keys.start } else { 0..0 }
    }

    /// `scores` [queries, keys] = scale * q k^T for this tile's queries against `keys`.
    fn scores(&self, q: &[f32], k: &[f32], keys: &Range<usize>, scores: &mut [f32]) {
        let d = self.d;
        let q = Matrix::rows(&q[self.queries.start * d..self.queries.end * d], d);
        let k = Matrix::rows(&k[keys.start * d..keys.end * d], d);
        matmul(scores, q, k.transposed(), self.scale, false);
    }

    /// The probabilities exp(score - lse) where the query sees the key, 0 elsewhere, in place.
    fn probabilities(&self, keys: &Range<usize>, lse: &[f32], scores: &mut [f32]) {
        for (r, (row, &lse)) in scores.chunks_exact_mut(keys.len()).zip(lse).enumerate() {
            let visible = self.visible(self.queries.start + r, keys);
            for (c, s) in row.iter_mut().enumerate() {
                *s = if visible.contains(&c) { (*s - lse).exp() } else { 0.0 };
            }
        }
    }
}

/// One tile of queries against the tiles of keys it sees, with an online softmax: `output` gets
/// softmax(scores) v for its rows, `lse` their log-sum-exp.
fn forward_tile(tile: Tile, q: &[f32], k: &[f32], v: &[f32], scores: &mut [f32], output: &mut [f32], lse: &mut [f32]) {
    let d = tile.d;
    let mut max = vec![f32::NEG_INFINITY; lse.len()];
    let mut sum = vec![0f32; lse.len()];
    for keys in tile.key_tiles() {
        let scores = &mut scores[..tile.queries.len() * keys.len()];
        tile.scores(q, k, &keys, scores);
        for (r, row) in scores.chunks_exact_mut(keys.len()).enumerate() {
            let visible = tile.visible(tile.queries.start + r, &keys);
            let tile_max = row[visible.clone()].iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let new_max = max[r].max(tile_max);
            if new_max == f32::NEG_INFINITY {
                row.fill(0.0); // no key seen yet: nothing to add
                continue;
            }
            let rescale = (max[r] - new_max).exp();
            let mut row_sum = 0f32;
            for (c, s) in row.iter_mut().enumerate() {
                *s = if visible.contains(&c) { (*s - new_max).exp() } else { 0.0 };
                row_sum += *s;
            }
            sum[r] = sum[r] * rescale + row_sum;
            max[r] = new_max;
            output[r * d..][..d].iter_mut().for_each(|o| *o *= rescale);
        }
        let v = Matrix::rows(&v[keys.start * d..keys.end * d], d);
        matmul(output, Matrix::rows(scores, keys.len()), v, 1.0, true);
    }
    for (r, lse) in lse.iter_mut().enumerate() {
        output[r * d..][..d].iter_mut().for_each(|o| *o /= sum[r]);
        *lse = max[r] + sum[r].ln();
    }
}

/// What the backward needs: the inputs, the output and the log-sum-exp of each query.
#[derive(Debug, Clone)]
struct Saved {
    q: FlexTensor,
    k: FlexTensor,
    v: FlexTensor,
    output: FlexTensor,
    lse: Vec<f32>,
    layout: Arc<AttentionLayout>,
    scale: f32,
}

#[derive(Debug)]
struct FusedAttention;

impl Backward<Flex, 3> for FusedAttention {
    type State = Saved;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let d_output = f32_contiguous(&grads.consume::<Flex>(&ops.node));
        let saved = &ops.state;
        let shape = HeadShape::of(&saved.q, &saved.k);
        let inputs = Inputs { q: slice(&saved.q), k: slice(&saved.k), v: slice(&saved.v), d_output: slice(&d_output) };
        let deltas = row_dots(inputs.d_output, slice(&saved.output), shape.head_dim);
        let [q_node, k_node, v_node] = ops.parents;
        let tensor = |values, like: &FlexTensor| FlexTensor::from_data(TensorData::new(values, like.layout().shape().clone()));
        if let Some(node) = q_node {
            let dq = d_queries(&shape, &inputs, &saved.lse, &deltas, &saved.layout, saved.scale);
            grads.register::<Flex>(node.id, tensor(dq, &saved.q));
        }
        if k_node.is_some() || v_node.is_some() {
            let (dk, dv) = d_keys_values(&shape, &inputs, &saved.lse, &deltas, &saved.layout, saved.scale);
            for (node, grad) in [(k_node, dk), (v_node, dv)] {
                if let Some(node) = node {
                    grads.register::<Flex>(node.id, tensor(grad, &saved.k));
                }
            }
        }
    }
}

/// The forward's inputs and the output's gradient, each contiguous.
struct Inputs<'a> {
    q: &'a [f32],
    k: &'a [f32],
    v: &'a [f32],
    d_output: &'a [f32],
}

/// D = rowsum(dO * O): one value per query.
fn row_dots(d_output: &[f32], output: &[f32], d: usize) -> Vec<f32> {
    d_output.par_chunks(d).zip(output.par_chunks(d)).map(|(g, o)| g.iter().zip(o).map(|(g, o)| g * o).sum()).collect()
}

/// dq [batch, heads, seq, head_dim]: per tile of queries, over the tiles of keys they see.
fn d_queries(shape: &HeadShape, inputs: &Inputs, lse: &[f32], deltas: &[f32], layout: &AttentionLayout, scale: f32) -> Vec<f32> {
    let HeadShape { heads, seq, head_dim: d, .. } = *shape;
    let mut dq = vec![0f32; inputs.q.len()];
    dq.par_chunks_mut(seq * d).enumerate().for_each(|(index, dq)| {
        let first_key = layout.row(index / heads);
        let kv = shape.kv_of(index);
        let head = HeadTensors::new(shape, inputs, index, kv, lse, deltas);
        dq.par_chunks_mut(QUERY_TILE * d).enumerate().for_each_init(
            || (vec![0f32; QUERY_TILE * KEY_TILE], vec![0f32; QUERY_TILE * KEY_TILE]),
            |(p, dp), (t, dq)| {
                let queries = t * QUERY_TILE..t * QUERY_TILE + dq.len() / d;
                let tile = Tile { queries, first_key, d, scale };
                for keys in tile.key_tiles() {
                    let n = tile.queries.len() * keys.len();
                    let ds = head.score_gradients(&tile, &keys, &mut p[..n], &mut dp[..n]);
                    let k = Matrix::rows(&head.k[keys.start * d..keys.end * d], d);
                    matmul(dq, Matrix::rows(ds, keys.len()), k, scale, true);
                }
            },
        );
    });
    dq
}

/// dk and dv [batch, kv_heads, seq, head_dim]: per tile of keys, over the queries of the kv
/// head's group of query heads that see them.
fn d_keys_values(
    shape: &HeadShape,
    inputs: &Inputs,
    lse: &[f32],
    deltas: &[f32],
    layout: &AttentionLayout,
    scale: f32,
) -> (Vec<f32>, Vec<f32>) {
    let HeadShape { heads, kv_heads, seq, head_dim: d, .. } = *shape;
    let groups = shape.groups();
    let mut dk = vec![0f32; inputs.k.len()];
    let mut dv = vec![0f32; inputs.v.len()];
    dk.par_chunks_mut(seq * d).zip(dv.par_chunks_mut(seq * d)).enumerate().for_each(|(kv, (dk, dv))| {
        let b = kv / kv_heads;
        let first_key = layout.row(b);
        dk.par_chunks_mut(KEY_TILE * d).zip(dv.par_chunks_mut(KEY_TILE * d)).enumerate().for_each_init(
            || (vec![0f32; QUERY_TILE * KEY_TILE], vec![0f32; QUERY_TILE * KEY_TILE]),
            |(p, dp), (t, (dk, dv))| {
                let keys = t * KEY_TILE..t * KEY_TILE + dk.len() / d;
                // Queries see key j from j on, up to the last whose first key is at most j.
                let query_end = first_key.partition_point(|&f| (f as usize) < keys.end);
                for h in 0..groups {
                    let index = b * heads + (kv % kv_heads) * groups + h;
                    let head = HeadTensors::new(shape, inputs, index, kv, lse, deltas);
                    for start in (keys.start..query_end).step_by(QUERY_TILE) {
                        let tile = Tile { queries: start..(start + QUERY_TILE).min(query_end), first_key, d, scale };
                        let n = tile.queries.len() * keys.len();
                        let p = &mut p[..n];
                        tile.scores(head.q, head.k, &keys, p);
                        tile.probabilities(&keys, &head.lse[tile.queries.clone()], p);
                        let d_output = Matrix::rows(&head.d_output[tile.queries.start * d..tile.queries.end * d], d);
                        matmul(dv, Matrix::rows(p, keys.len()).transposed(), d_output, 1.0, true);
                        let ds = head.score_gradients_from(&tile, &keys, p, &mut dp[..n]);
                        let q = Matrix::rows(&head.q[tile.queries.start * d..tile.queries.end * d], d);
                        matmul(dk, Matrix::rows(ds, keys.len()).transposed(), q, scale, true);
                    }
                }
            },
        );
    });
    (dk, dv)
}

/// One query head's slices and the slices of the kv head it reads.
struct HeadTensors<'a> {
    q: &'a [f32],
    k: &'a [f32],
    v: &'a [f32],
    d_output: &'a [f32],
    lse: &'a [f32],
    deltas: &'a [f32],
}

impl<'a> HeadTensors<'a> {
    fn new(shape: &HeadShape, inputs: &Inputs<'a>, index: usize, kv: usize, lse: &'a [f32], deltas: &'a [f32]) -> Self {
        let rows = index * shape.seq..(index + 1) * shape.seq;
        Self {
            q: shape.head(inputs.q, index),
            k: shape.head(inputs.k, kv),
            v: shape.head(inputs.v, kv),
            d_output: shape.head(inputs.d_output, index),
            lse: &lse[rows.clone()],
            deltas: &deltas[rows],
        }
    }

    /// dS for the tile's queries against `keys`, recomputing P into `p`; `dp` is scratch.
    fn score_gradients<'s>(&self, tile: &Tile, keys: &Range<usize>, p: &'s mut [f32], dp: &'s mut [f32]) -> &'s [f32] {
        tile.scores(self.q, self.k, keys, p);
        tile.probabilities(keys, &self.lse[tile.queries.clone()], p);
        self.score_gradients_from(tile, keys, p, dp)
    }

    /// dS = P * (dO v^T - D), into `dp`, from the probabilities `p`.
    fn score_gradients_from<'s>(&self, tile: &Tile, keys: &Range<usize>, p: &[f32], dp: &'s mut [f32]) -> &'s [f32] {
        let d = tile.d;
        let d_output = Matrix::rows(&self.d_output[tile.queries.start * d..tile.queries.end * d], d);
        let v = Matrix::rows(&self.v[keys.start * d..keys.end * d], d);
        matmul(dp, d_output, v.transposed(), 1.0, false);
        let deltas = &self.deltas[tile.queries.clone()];
        for ((dp, p), &delta) in dp.chunks_exact_mut(keys.len()).zip(p.chunks_exact(keys.len())).zip(deltas) {
            dp.iter_mut().zip(p).for_each(|(dp, &p)| *dp = p * (*dp - delta));
        }
        dp
    }
}

/// An f32 matrix in a slice, row-major or a transposed view of one.
#[derive(Clone, Copy)]
struct Matrix<'a> {
    values: &'a [f32],
    rows: usize,
    cols: usize,
    row_stride: usize,
    col_stride: usize,
}

impl<'a> Matrix<'a> {
    /// `values` as rows of `cols`.
    fn rows(values: &'a [f32], cols: usize) -> Self {
        Self { values, rows: values.len() / cols, cols, row_stride: cols, col_stride: 1 }
    }

    fn transposed(self) -> Self {
        Self { rows: self.cols, cols: self.rows, row_stride: self.col_stride, col_stride: self.row_stride, ..self }
    }
}

/// `out` [a.rows, b.cols] (row-major) = factor * a b, plus `out` when `accumulate`.
fn matmul(out: &mut [f32], a: Matrix, b: Matrix, factor: f32, accumulate: bool) {
    assert_eq!(a.cols, b.rows, "inner dimensions");
    assert!(out.len() >= a.rows * b.cols, "the output holds [{}, {}]", a.rows, b.cols);
    let last = |m: &Matrix| (m.rows - 1) * m.row_stride + (m.cols - 1) * m.col_stride;
    if a.rows == 0 || b.cols == 0 || a.cols == 0 {
        return;
    }
    assert!(last(&a) < a.values.len() && last(&b) < b.values.len(), "matrix views within their slices");
    let stride = |s: usize| isize::try_from(s).expect("strides fit isize");
    // SAFETY: the views and the output lie within their slices (checked above); `out` is borrowed
    // mutably, so it overlaps neither input.
    unsafe {
        gemm::gemm(
            a.rows,
            b.cols,
            a.cols,
            out.as_mut_ptr(),
            1,
            stride(b.cols),
            accumulate,
            a.values.as_ptr(),
            stride(a.col_stride),
            stride(a.row_stride),
            b.values.as_ptr(),
            stride(b.col_stride),
            stride(b.row_stride),
            1.0,
            factor,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The product of two views against a plain triple loop.
    #[test]
    fn matmul_of_transposed_views() {
        let a: Vec<f32> = (0..6).map(|i| i as f32).collect(); // [2, 3]
        let b: Vec<f32> = (0..12).map(|i| (i as f32) / 2.0).collect(); // [4, 3], used transposed
        let mut out = vec![1f32; 8];
        matmul(&mut out, Matrix::rows(&a, 3), Matrix::rows(&b, 3).transposed(), 2.0, true);
        for i in 0..2 {
            for j in 0..4 {
                let dot: f32 = (0..3).map(|c| a[i * 3 + c] * b[j * 3 + c]).sum();
                assert_eq!(out[i * 4 + j], 1.0 + 2.0 * dot, "[{i}, {j}]");
            }
        }
    }
}
