//! The fused attention on burn-flex, for f32 and bf16 ([`crate::fused_attention`]): FlashAttention-2.
//!
//! Forward: each tile of queries of a head meets the tiles of keys it can see (whole tiles before
//! the example's or the window's first key, or after the tile's last query, are skipped), and keeps
//! the output and each query's log-sum-exp. Backward: D per query; then, per query head, each
//! tile of keys meets the tiles of queries that see it: the probabilities recomputed from the
//! log-sum-exp and their gradient serve dq, dk and dv at once (five products per pair of tiles);
//! the kv head's group of query heads sums dk and dv after. Memory beyond q, k, v and the output
//! is O(seq) per head plus a few tiles per thread. rayon runs the heads (x tiles of queries in the
//! forward) in parallel; the tiles' products are the gemm crate's kernels (SIMD), as burn-flex's
//! matmul, and the softmax's exp runs in SIMD registers too ([`exp_simd`]).
//!
//! f32 takes one pass over the keys in the forward (online softmax) and D = rowsum(dO * O).
//! bf16 computes in f32 from the bf16 values and rounds to bf16 where the eager bf16 attention
//! does (transformers' `eager_attention_forward`, which the bf16 references run, and
//! [`crate::eager_attention`]): the scores as a bf16 matmul's output, then scaled and rounded
//! (the scale itself in bf16, as the eager path's: see [`Rounding::new`]); the probabilities
//! once normalised (softmax in f32, then cast to bf16, rounded as burn-flex's cast: see
//! [`Precision::round_as_cast`]); the output. Normalised probabilities need each query's
//! log-sum-exp first, so the bf16 forward takes two passes over the keys. Its backward rounds as
//! autodiff of that composition does: dP = dO v^T; dS (the softmax's backward in f32, from P in
//! f32 and the rounded dP, with D = rowsum(P * dP) as that backward sums it, cast), then scaled;
//! dq; dk and dv per query head (dv from the rounded P), before the group's sum (repeat_kv's
//! backward) rounds again.

use std::borrow::Cow;
use std::ops::Range;
use std::sync::Arc;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops};
use burn::backend::flex::{Flex, FlexTensor};
use burn::tensor::{DType, Shape, Tensor, TensorData, backend::Backend, bf16};
use rayon::prelude::*;

use crate::{AttentionLayout, exp_simd, flex};

/// Queries per tile and keys per tile: with head_dim 128 a tile of queries, one of keys, one of
/// values, the scores between them and their gradients take 320 KiB, within a core's L2 cache
/// (1-2 MiB on current x86 server cores). 128 trains 1.1x as fast as 64 at head_dim 64 and 128
/// (benches/attention_kernel.rs): larger products outweigh the masked half of the diagonal's tiles.
const QUERY_TILE: usize = 128;
const KEY_TILE: usize = 128;

/// Whether the kernel serves q, k and v of `dtype` on `B`: f32 or bf16 on burn-flex (or autodiff over it).
pub(crate) fn serves<B: Backend>(dtype: DType) -> bool {
    Precision::of(dtype).is_some() && flex::is_flex_or_autodiff_flex::<B>()
}

/// q [batch, heads, seq, head_dim], k and v [batch, kv_heads, seq, head_dim], f32 or bf16 (one dtype).
pub(crate) fn fused_attention<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    layout: &AttentionLayout,
    scale: f64,
) -> Tensor<B, 4> {
    let layout = Arc::new(layout.clone());
    flex::with_backward_n([q, k, v], FusedAttention, |[q, k, v]| {
        let (q, k, v) = (q.to_contiguous(), k.to_contiguous(), v.to_contiguous());
        let precision = Precision::of(q.dtype()).expect("the fused attention kernel takes f32 or bf16");
        assert!(k.dtype() == q.dtype() && v.dtype() == q.dtype(), "q, k and v have one dtype");
        let shape = HeadShape::of(&q, &k);
        let rounding = Rounding::new(precision, scale);
        let (output, lse) = forward(&shape, &values(&q), &values(&k), &values(&v), &layout, rounding);
        let output = precision.tensor(output, q.layout().shape());
        (output.clone(), Saved { q, k, v, output, lse, layout, rounding })
    })
}

/// The dtype the kernel computes for: f32, or bf16 with the eager bf16 attention's rounding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Precision {
    F32,
    Bf16,
}

impl Precision {
    fn of(dtype: DType) -> Option<Self> {
        match dtype {
            DType::F32 => Some(Self::F32),
            DType::BF16 => Some(Self::Bf16),
            _ => None,
        }
    }

    /// `values` as a matmul's output in this precision: bf16 rounds to nearest, ties to even.
    fn round(self, values: &mut [f32]) {
        if self == Self::Bf16 {
            values.iter_mut().for_each(|v| *v = round_to_bf16(*v));
        }
    }

    /// `values` as a cast from f32 gives them: for bf16, burn-flex's cast (half's f64 -> bf16,
    /// which drops the low 32 bits of the f64 before rounding, so an f32 just above a bf16 tie
    /// rounds as the tie, to even). Where the eager path casts (the softmax's output, the
    /// gradient of its input) the kernel rounds so; with correct rounding instead, the
    /// sliding-window bf16 LoRA run of tests/mixed_precision.rs moved from eager's step-3 loss
    /// gap (1.53e-3 on 3 ranks) to 2.02e-3.
    fn round_as_cast(self, values: &mut [f32]) {
        if self == Self::Bf16 {
            values.iter_mut().for_each(|v| *v = bf16::from_f64(f64::from(*v)).to_f32());
        }
    }

    /// `values[i] = exp(values[i] - shift)` in place; returns their sum. f32 in SIMD registers
    /// (within 1 ulp); bf16 by std's exp one value at a time and summed in order, as the eager
    /// bf16 softmax (burn-flex's exp) computes them, to keep its bits.
    fn exp_minus(self, values: &mut [f32], shift: f32) -> f32 {
        match self {
            Self::F32 => exp_simd::exp_minus(values, shift),
            Self::Bf16 => values
                .iter_mut()
                .map(|v| {
                    *v = (*v - shift).exp();
                    *v
                })
                .sum(),
        }
    }

    /// `values` as a tensor of `shape` in this dtype (bf16 rounded).
    fn tensor(self, values: Vec<f32>, shape: &Shape) -> FlexTensor {
        let data = match self {
            Self::F32 => TensorData::new(values, shape.clone()),
            Self::Bf16 => TensorData::new(values.into_iter().map(bf16::from_f32).collect::<Vec<_>>(), shape.clone()),
        };
        FlexTensor::from_data(data)
    }
}

fn round_to_bf16(value: f32) -> f32 {
    bf16::from_f32(value).to_f32()
}

/// How a call rounds (its precision) and scales its scores.
#[derive(Debug, Clone, Copy)]
struct Rounding {
    precision: Precision,
    scale: f32,
}

impl Rounding {
    /// bf16 scales by the scale rounded to bf16, as the eager path's bf16 tensor * scalar does
    /// (burn-flex rounds the scalar to the tensor's dtype; torch multiplies by the f32 scale).
    /// Measured with the f32 scale (and correctly rounded casts) on the sliding-window LoRA
    /// fixture (head_dim 8, whose scale bf16 does not hold): nearer torch's bf16 run after the
    /// first step (loss 3.8e-5 from it against 5.2e-5, grad norm 1.9-3.0e-4 against 7.8e-4
    /// relative), further after three (step 3's loss 4.7-5.2e-3 from it against 1.5-1.7e-3, past
    /// tests/mixed_precision.rs's bounds), so it stays with the eager path's until that is
    /// understood.
    fn new(precision: Precision, scale: f64) -> Self {
        let scale = match precision {
            Precision::F32 => scale as f32,
            Precision::Bf16 => round_to_bf16(scale as f32),
        };
        Self { precision, scale }
    }

    /// The factor gemm applies to a product of scores (q k^T, or dS k and dS^T q in the
    /// backward): f32 folds the scale into the product; bf16 scales the rounded product after it
    /// ([`Self::scale`]), as the eager attention does.
    fn gemm_factor(self) -> f32 {
        match self.precision {
            Precision::F32 => self.scale,
            Precision::Bf16 => 1.0,
        }
    }

    /// Rounded scores (or their gradients) as the eager attention scales them, after a product
    /// computed with [`Self::gemm_factor`]: bf16 multiplies them by the scale in f32 and rounds
    /// (bf16 tensor * scalar); f32 has them scaled already.
    fn scale(self, values: &mut [f32]) {
        if self.precision == Precision::Bf16 {
            values.iter_mut().for_each(|v| *v = round_to_bf16(*v * self.scale));
        }
    }
}

/// A contiguous tensor's values as f32: borrowed for f32, converted (exactly) from bf16.
fn values(tensor: &FlexTensor) -> Cow<'_, [f32]> {
    match tensor.dtype() {
        DType::F32 => Cow::Borrowed(tensor.as_slice::<f32>().expect("contiguous")),
        DType::BF16 => Cow::Owned(tensor.as_slice::<bf16>().expect("contiguous").iter().map(|v| v.to_f32()).collect()),
        dtype => panic!("the fused attention kernel takes f32 or bf16, not {dtype:?}"),
    }
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

/// The output [batch, heads, seq, head_dim] (f32, not yet rounded) and each query's log-sum-exp [batch, heads, seq].
fn forward(shape: &HeadShape, q: &[f32], k: &[f32], v: &[f32], layout: &AttentionLayout, rounding: Rounding) -> (Vec<f32>, Vec<f32>) {
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
                forward_tile(Tile { queries, first_key, d, rounding }, q, k, v, scores, output, lse);
            },
        );
    });
    (output, lse)
}

/// A tile of queries of one head: their positions, which keys each sees, head_dim and the rounding.
#[derive(Clone)]
struct Tile<'a> {
    queries: Range<usize>,
    first_key: &'a [i32],
    d: usize,
    rounding: Rounding,
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

    /// `scores` [queries, keys] = scale * q k^T for this tile's queries against `keys`, rounded as
    /// the precision's eager attention rounds them.
    fn scores(&self, q: &[f32], k: &[f32], keys: &Range<usize>, scores: &mut [f32]) {
        let d = self.d;
        let q = Matrix::rows(&q[self.queries.start * d..self.queries.end * d], d);
        let k = Matrix::rows(&k[keys.start * d..keys.end * d], d);
        matmul(scores, q, k.transposed(), self.rounding.gemm_factor(), false);
        self.rounding.precision.round(scores);
        self.rounding.scale(scores);
    }

    /// The probabilities exp(score - lse) where the query sees the key, 0 elsewhere, in place (f32).
    fn probabilities(&self, keys: &Range<usize>, lse: &[f32], scores: &mut [f32]) {
        for (r, (row, &lse)) in scores.chunks_exact_mut(keys.len()).zip(lse).enumerate() {
            let visible = self.visible(self.queries.start + r, keys);
            self.rounding.precision.exp_minus(&mut row[visible.clone()], lse);
            keep_only(row, visible);
        }
    }
}

/// Zeroes `row` outside `visible`.
fn keep_only(row: &mut [f32], visible: Range<usize>) {
    row[..visible.start].fill(0.0);
    row[visible.end..].fill(0.0);
}

/// The running max of a tile's queries' scores and the sum of exp(score - max), over the tiles of
/// keys taken in so far (the online softmax).
struct RowStatistics {
    max: Vec<f32>,
    sum: Vec<f32>,
}

impl RowStatistics {
    fn new(rows: usize) -> Self {
        Self { max: vec![f32::NEG_INFINITY; rows], sum: vec![0f32; rows] }
    }

    /// Takes in the scores of one tile of keys, which become exp(score - the row's new max) where
    /// the query sees the key (0 elsewhere); `rescaled(row, factor)` is told the factor that
    /// carries what the row summed before over to its new max.
    fn take_in(&mut self, tile: &Tile, keys: &Range<usize>, scores: &mut [f32], mut rescaled: impl FnMut(usize, f32)) {
        for (r, row) in scores.chunks_exact_mut(keys.len()).enumerate() {
            let visible = tile.visible(tile.queries.start + r, keys);
            let new_max = self.max[r].max(exp_simd::max(&row[visible.clone()]));
            if new_max == f32::NEG_INFINITY {
                row.fill(0.0); // no key seen yet: nothing to add
                continue;
            }
            let factor = (self.max[r] - new_max).exp();
            let row_sum = tile.rounding.precision.exp_minus(&mut row[visible.clone()], new_max);
            keep_only(row, visible);
            self.sum[r] = self.sum[r] * factor + row_sum;
            self.max[r] = new_max;
            rescaled(r, factor);
        }
    }

    /// Each row's log-sum-exp, into `lse`.
    fn write_lse(&self, lse: &mut [f32]) {
        for ((lse, max), sum) in lse.iter_mut().zip(&self.max).zip(&self.sum) {
            *lse = max + sum.ln();
        }
    }
}

/// One tile of queries against the tiles of keys it sees: `output` gets softmax(scores) v for its
/// rows, `lse` their log-sum-exp.
fn forward_tile(tile: Tile, q: &[f32], k: &[f32], v: &[f32], scores: &mut [f32], output: &mut [f32], lse: &mut [f32]) {
    let d = tile.d;
    let values = |keys: &Range<usize>| Matrix::rows(&v[keys.start * d..keys.end * d], d);
    let mut statistics = RowStatistics::new(lse.len());
    match tile.rounding.precision {
        // One pass: the output sums exp(score - the running max) v, carried over as the max
        // grows, and is divided by the sum at the end.
        Precision::F32 => {
            for keys in tile.key_tiles() {
                let scores = &mut scores[..tile.queries.len() * keys.len()];
                tile.scores(q, k, &keys, scores);
                statistics.take_in(&tile, &keys, scores, |r, factor| output[r * d..][..d].iter_mut().for_each(|o| *o *= factor));
                matmul(output, Matrix::rows(scores, keys.len()), values(&keys), 1.0, true);
            }
            for (output, sum) in output.chunks_exact_mut(d).zip(&statistics.sum) {
                output.iter_mut().for_each(|o| *o /= sum);
            }
            statistics.write_lse(lse);
        }
        // Two passes: the log-sum-exp, then the normalised probabilities rounded (eager's softmax
        // output in bf16) times v.
        Precision::Bf16 => {
            for keys in tile.key_tiles() {
                let scores = &mut scores[..tile.queries.len() * keys.len()];
                tile.scores(q, k, &keys, scores);
                statistics.take_in(&tile, &keys, scores, |_, _| {});
            }
            statistics.write_lse(lse);
            for keys in tile.key_tiles() {
                let probabilities = &mut scores[..tile.queries.len() * keys.len()];
                tile.scores(q, k, &keys, probabilities);
                tile.probabilities(&keys, lse, probabilities);
                tile.rounding.precision.round_as_cast(probabilities);
                matmul(output, Matrix::rows(probabilities, keys.len()), values(&keys), 1.0, true);
            }
        }
    }
}

/// What the backward needs: the inputs, the output (in their dtype) and the log-sum-exp of each query.
#[derive(Debug, Clone)]
struct Saved {
    q: FlexTensor,
    k: FlexTensor,
    v: FlexTensor,
    output: FlexTensor,
    lse: Vec<f32>,
    layout: Arc<AttentionLayout>,
    rounding: Rounding,
}

#[derive(Debug)]
struct FusedAttention;

impl Backward<Flex, 3> for FusedAttention {
    type State = Saved;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let d_output = grads.consume::<Flex>(&ops.node).to_contiguous();
        let saved = &ops.state;
        let shape = HeadShape::of(&saved.q, &saved.k);
        let (q, k, v, d_output) = (values(&saved.q), values(&saved.k), values(&saved.v), values(&d_output));
        let inputs = Inputs { q: &q, k: &k, v: &v, d_output: &d_output, lse: &saved.lse };
        let deltas = match saved.rounding.precision {
            Precision::F32 => row_dots(inputs.d_output, &values(&saved.output), shape.head_dim),
            Precision::Bf16 => softmax_gradient_dots(&shape, &inputs, &saved.layout, saved.rounding),
        };
        let [dq, dk, dv] = gradients(&shape, &inputs, &deltas, &saved.layout, saved.rounding);
        let [q_node, k_node, v_node] = ops.parents;
        for (node, grad, like) in [(q_node, dq, &saved.q), (k_node, dk, &saved.k), (v_node, dv, &saved.v)] {
            if let Some(node) = node {
                grads.register::<Flex>(node.id, saved.rounding.precision.tensor(grad, like.layout().shape()));
            }
        }
    }
}

/// The forward's inputs, the output's gradient (each contiguous, as f32) and the forward's log-sum-exp.
struct Inputs<'a> {
    q: &'a [f32],
    k: &'a [f32],
    v: &'a [f32],
    d_output: &'a [f32],
    lse: &'a [f32],
}

/// D = rowsum(dO * O): one value per query (f32).
fn row_dots(d_output: &[f32], output: &[f32], d: usize) -> Vec<f32> {
    d_output.par_chunks(d).zip(output.par_chunks(d)).map(|(g, o)| g.iter().zip(o).map(|(g, o)| g * o).sum()).collect()
}

/// D = rowsum(P * dP) per query, P in f32 and dP rounded, as the eager softmax's backward sums
/// them (bf16): rowsum(dO * O) would take in the rounding of P and of the output.
fn softmax_gradient_dots(shape: &HeadShape, inputs: &Inputs, layout: &AttentionLayout, rounding: Rounding) -> Vec<f32> {
    let HeadShape { heads, seq, head_dim: d, .. } = *shape;
    let mut deltas = vec![0f32; inputs.lse.len()];
    deltas.par_chunks_mut(seq).enumerate().for_each(|(index, deltas)| {
        let first_key = layout.row(index / heads);
        let head = HeadTensors::new(shape, inputs, index);
        deltas.par_chunks_mut(QUERY_TILE).enumerate().for_each_init(
            || (vec![0f32; QUERY_TILE * KEY_TILE], vec![0f32; QUERY_TILE * KEY_TILE]),
            |(p, dp), (t, deltas)| {
                let queries = t * QUERY_TILE..t * QUERY_TILE + deltas.len();
                let tile = Tile { queries, first_key, d, rounding };
                for keys in tile.key_tiles() {
                    let n = tile.queries.len() * keys.len();
                    let (p, dp) = (&mut p[..n], &mut dp[..n]);
                    head.probabilities(&tile, &keys, p);
                    head.probability_gradients(&tile, &keys, dp);
                    for ((delta, p), dp) in deltas.iter_mut().zip(p.chunks_exact(keys.len())).zip(dp.chunks_exact(keys.len())) {
                        *delta += p.iter().zip(dp).map(|(p, dp)| p * dp).sum::<f32>();
                    }
                }
            },
        );
    });
    deltas
}

/// dq [batch, heads, seq, head_dim], dk and dv [batch, kv_heads, seq, head_dim] (f32, not yet
/// rounded), in one pass over the tiles: for each query head, each tile of keys meets the tiles
/// of queries that see it, and the pair's P and dS serve all three gradients. Each query head
/// (one rayon task) owns its dq and its own dk and dv, which its kv head's group sums after.
fn gradients(shape: &HeadShape, inputs: &Inputs, deltas: &[f32], layout: &AttentionLayout, rounding: Rounding) -> [Vec<f32>; 3] {
    let HeadShape { heads, seq, head_dim: d, .. } = *shape;
    let head_len = seq * d;
    let mut dq = vec![0f32; inputs.q.len()];
    let mut head_dk = vec![0f32; inputs.q.len()];
    let mut head_dv = vec![0f32; inputs.q.len()];
    let per_head = dq.par_chunks_mut(head_len).zip(head_dk.par_chunks_mut(head_len)).zip(head_dv.par_chunks_mut(head_len));
    per_head.enumerate().for_each_init(
        || (vec![0f32; QUERY_TILE * KEY_TILE], vec![0f32; QUERY_TILE * KEY_TILE]),
        |(p, dp), (index, ((dq, dk), dv))| {
            let first_key = layout.row(index / heads);
            let head = HeadTensors::new(shape, inputs, index);
            let deltas = &deltas[index * seq..][..seq];
            for (t, (dk, dv)) in dk.chunks_mut(KEY_TILE * d).zip(dv.chunks_mut(KEY_TILE * d)).enumerate() {
                let keys = t * KEY_TILE..t * KEY_TILE + dk.len() / d;
                // Queries see key j from j on, up to the last whose first key is at most j.
                let query_end = first_key.partition_point(|&f| (f as usize) < keys.end);
                for start in (keys.start..query_end).step_by(QUERY_TILE) {
                    let tile = Tile { queries: start..(start + QUERY_TILE).min(query_end), first_key, d, rounding };
                    let n = tile.queries.len() * keys.len();
                    let p = &mut p[..n];
                    head.probabilities(&tile, &keys, p);
                    let ds = Matrix::rows(head.score_gradients(&tile, &keys, &deltas[tile.queries.clone()], p, &mut dp[..n]), keys.len());
                    let rows = tile.queries.start * d..tile.queries.end * d;
                    let (q, k, d_output) = (&head.q[rows.clone()], &head.k[keys.start * d..keys.end * d], &head.d_output[rows.clone()]);
                    matmul(&mut dq[rows], ds, Matrix::rows(k, d), rounding.gemm_factor(), true);
                    matmul(dk, ds.transposed(), Matrix::rows(q, d), rounding.gemm_factor(), true);
                    // dv from P as the forward multiplied v by it: rounded.
                    rounding.precision.round_as_cast(p);
                    matmul(dv, Matrix::rows(p, keys.len()).transposed(), Matrix::rows(d_output, d), 1.0, true);
                }
            }
        },
    );
    let (dk, dv) = (sum_over_groups(shape, head_dk, rounding.precision), sum_over_groups(shape, head_dv, rounding.precision));
    [dq, dk, dv]
}

/// The kv heads' gradients [batch, kv_heads, seq, head_dim] from their query heads'
/// [batch, heads, seq, head_dim]: each query head's rounded as a matmul's output, then summed
/// over the group in order (repeat_kv's backward).
fn sum_over_groups(shape: &HeadShape, mut per_head: Vec<f32>, precision: Precision) -> Vec<f32> {
    precision.round(&mut per_head);
    let (groups, head_len) = (shape.groups(), shape.seq * shape.head_dim);
    if groups == 1 {
        return per_head;
    }
    // A kv head's query heads are consecutive in [batch, heads].
    let mut sums = vec![0f32; per_head.len() / groups];
    sums.par_chunks_mut(head_len).zip(per_head.par_chunks(head_len * groups)).for_each(|(sum, group)| {
        for head in group.chunks_exact(head_len) {
            sum.iter_mut().zip(head).for_each(|(s, h)| *s += h);
        }
    });
    sums
}

/// One query head's slices, the slices of the kv head it reads and its queries' log-sum-exp.
struct HeadTensors<'a> {
    q: &'a [f32],
    k: &'a [f32],
    v: &'a [f32],
    d_output: &'a [f32],
    lse: &'a [f32],
}

impl<'a> HeadTensors<'a> {
    /// Query head `index` of the flattened [batch, heads].
    fn new(shape: &HeadShape, inputs: &Inputs<'a>, index: usize) -> Self {
        let kv = shape.kv_of(index);
        Self {
            q: shape.head(inputs.q, index),
            k: shape.head(inputs.k, kv),
            v: shape.head(inputs.v, kv),
            d_output: shape.head(inputs.d_output, index),
            lse: &inputs.lse[index * shape.seq..][..shape.seq],
        }
    }

    /// P (f32) for the tile's queries against `keys`, recomputed into `p`.
    fn probabilities(&self, tile: &Tile, keys: &Range<usize>, p: &mut [f32]) {
        tile.scores(self.q, self.k, keys, p);
        tile.probabilities(keys, &self.lse[tile.queries.clone()], p);
    }

    /// dP = dO v^T for the tile's queries against `keys`, into `dp`, rounded as a matmul's output.
    fn probability_gradients(&self, tile: &Tile, keys: &Range<usize>, dp: &mut [f32]) {
        let d = tile.d;
        let d_output = Matrix::rows(&self.d_output[tile.queries.start * d..tile.queries.end * d], d);
        let v = Matrix::rows(&self.v[keys.start * d..keys.end * d], d);
        matmul(dp, d_output, v.transposed(), 1.0, false);
        tile.rounding.precision.round(dp);
    }

    /// dS = P * (dP - D), into `dp`, from the probabilities `p` and the tile's queries' `deltas`;
    /// rounded as a cast (from the f32 softmax), then scaled as the scores were.
    fn score_gradients<'s>(&self, tile: &Tile, keys: &Range<usize>, deltas: &[f32], p: &[f32], dp: &'s mut [f32]) -> &'s [f32] {
        self.probability_gradients(tile, keys, dp);
        for ((dp, p), &delta) in dp.chunks_exact_mut(keys.len()).zip(p.chunks_exact(keys.len())).zip(deltas) {
            dp.iter_mut().zip(p).for_each(|(dp, &p)| *dp = p * (*dp - delta));
        }
        tile.rounding.precision.round_as_cast(dp);
        tile.rounding.scale(dp);
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
