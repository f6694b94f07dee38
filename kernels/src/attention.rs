//! Causal self-attention over packed rows, with Mistral's sliding window and grouped-query heads:
//! the fused (FlashAttention-2) op the model trains with, and the eager composition of burn's
//! tensor ops that is its reference.
//!
//! The fused op never holds the [batch, heads, seq, seq] scores: it keeps the output and each
//! row's log-sum-exp, and its backward recomputes the score tiles. It chooses its path by backend:
//! burn-flex (or autodiff over it) in f32 takes the CPU kernel (`attention_flex`), a cubecl backend
//! the cube kernels (`attention_cube`), any other backend or dtype the eager composition.

use burn::tensor::{DType, Int, Tensor, TensorData, backend::Backend};

use crate::heads::repeat_kv;
use crate::{attention_cube, attention_flex, matmul, softmax_last};

/// Which keys each query may see, per row of a micro-batch: query i sees keys j with
/// first_key[i] <= j <= i. first_key is nondecreasing in i, so for key j the queries that see it
/// are the contiguous range i in [j, last_query(j)]. Built from each row's example start offsets
/// (each list begins at 0; padding after the last example belongs to it) and Mistral's sliding
/// window: first_key[i] = max(start of i's example, i + 1 - window).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttentionLayout {
    pub seq: usize,
    /// [layouts * seq], row-major; layouts is 1 (every row of the batch shares it) or batch.
    pub first_key: Vec<i32>,
    pub layouts: usize,
}

impl AttentionLayout {
    /// Rows of `seq` tokens whose examples start at `starts` (one list per row, each from 0, in
    /// order), under a sliding `window` when given. One layout when every row has the same starts.
    pub fn new(seq: usize, starts: &[Vec<u32>], window: Option<usize>) -> Self {
        assert!(!starts.is_empty(), "a micro-batch has at least one row");
        let rows = if starts.iter().all(|s| s == &starts[0]) { &starts[..1] } else { starts };
        let mut first_key = Vec::with_capacity(rows.len() * seq);
        for row in rows {
            assert!(row.first() == Some(&0) && row.is_sorted(), "a row's examples start at 0, in order: {row:?}");
            let mut example = 0;
            for i in 0..seq {
                while example + 1 < row.len() && row[example + 1] as usize <= i {
                    example += 1;
                }
                let window_start = window.map_or(0, |w| (i + 1).saturating_sub(w));
                first_key.push((row[example] as usize).max(window_start) as i32);
            }
        }
        Self { seq, first_key, layouts: rows.len() }
    }

    /// first_key of batch row `row`: [seq].
    pub fn row(&self, row: usize) -> &[i32] {
        let layout = if self.layouts == 1 { 0 } else { row };
        &self.first_key[layout * self.seq..][..self.seq]
    }

    /// Panics unless the layout fits q's `batch` rows of `seq` tokens.
    fn check(&self, batch: usize, seq: usize) {
        assert_eq!(self.seq, seq, "the attention layout is for {} tokens, the queries have {seq}", self.seq);
        assert!(self.layouts == 1 || self.layouts == batch, "{} attention layouts for a batch of {batch} rows", self.layouts);
        assert_eq!(self.first_key.len(), self.layouts * self.seq, "first_key holds layouts * seq values");
    }
}

/// Whether the fused attention on B computes `seq` positions of these heads right where shader
/// loops stop at Mesa's lavapipe's limit (`software_vulkan`: burn-wgpu on lavapipe, Vulkan on the
/// CPU): always on burn-flex and on GPUs; on lavapipe while the cube kernels' loops stay under
/// it (a few hundred positions at head_dim 128: docs/attention.md).
pub fn fused_attention_fits<B: Backend>(seq: usize, heads: usize, kv_heads: usize, head_dim: usize, software_vulkan: bool) -> bool {
    !(software_vulkan && attention_cube::serves::<B>())
        || attention_cube::loop_iterations(seq, heads, kv_heads, head_dim) <= attention_cube::LAVAPIPE_LOOP_LIMIT
}

/// q: [batch, heads, seq, head_dim]; k, v: [batch, kv_heads, seq, head_dim], heads = kv_heads * groups,
/// query head h reads kv head h / groups (k and v are never repeated in memory). Softmax in f32,
/// scores scaled by `scale`. Returns [batch, heads, seq, head_dim] in q's dtype. Differentiable in
/// q, k, v under burn's Autodiff (custom Backward: the forward keeps the output and the rows'
/// log-sum-exp [batch, heads, seq] f32; the backward recomputes the score tiles, FlashAttention-2).
pub fn fused_attention<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    layout: &AttentionLayout,
    scale: f64,
) -> Tensor<B, 4> {
    check_shapes(&q, &k, &v, layout);
    if attention_cube::serves::<B>() {
        return attention_cube::fused_attention(q, k, v, layout, scale);
    }
    // bf16 too: burn-flex's kernel rounds where (and as) eager bf16 does, so the bf16 runs keep
    // the bounds they hold against torch's bf16 runs (docs/attention.md).
    if attention_flex::serves::<B>(q.dtype()) {
        return attention_flex::fused_attention(q, k, v, layout, scale);
    }
    eager_attention(q, k, v, layout, scale)
}

/// The same with burn's tensor ops (kv heads repeated, [s, s] scores, additive -inf mask, f32 softmax): the reference.
pub fn eager_attention<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    layout: &AttentionLayout,
    scale: f64,
) -> Tensor<B, 4> {
    check_shapes(&q, &k, &v, layout);
    let mask = EagerMask::new(layout, &q.device(), q.dtype());
    eager_attention_masked(q, k, v, &mask, scale)
}

/// [`eager_attention`] with its mask made once: the model's eager path shares one mask between
/// its layers. k and v may come repeated already (kv_heads = heads).
pub fn eager_attention_masked<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    mask: &EagerMask<B>,
    scale: f64,
) -> Tensor<B, 4> {
    let groups = q.dims()[1] / k.dims()[1];
    let (k, v) = (repeat_kv(k, groups), repeat_kv(v, groups));
    let scores = mask.apply(matmul(q, k.swap_dims(2, 3)).mul_scalar(scale));
    matmul(softmax_last(scores), v)
}

/// An [`AttentionLayout`] as the eager path's additive mask: [layouts, seq * seq], 0 where query i
/// may see key j, -inf elsewhere.
///
/// One row per layout: a single row, which a [batch * heads, ...] view of the scores shares, when
/// every row of the micro-batch has the same layout; burn-flex runs that broadcast as a SIMD loop,
/// where a [1, 1, seq, seq] mask broadcast over [batch, heads] walks a strided iterator element by
/// element (an order of magnitude slower).
#[derive(Debug, Clone)]
pub struct EagerMask<B: Backend> {
    bias: Tensor<B, 2>,
}

impl<B: Backend> EagerMask<B> {
    /// The mask of `layout`, made on `device` with tensor ops (only first_key goes there), in `dtype`.
    pub fn new(layout: &AttentionLayout, device: &B::Device, dtype: DType) -> Self {
        let AttentionLayout { seq, layouts, .. } = *layout;
        let first_key: Vec<i64> = layout.first_key.iter().map(|&k| i64::from(k)).collect();
        let first_key = Tensor::<B, 1, Int>::from_data(TensorData::new(first_key, [layouts * seq]), device);
        let t = Tensor::<B, 1, Int>::arange(0..seq as i64, device);
        let keys = t.clone().reshape([1, 1, seq]).expand([layouts, seq, seq]);
        let causal = keys.clone().lower_equal(t.reshape([1, seq, 1]).expand([layouts, seq, seq]));
        let allowed = causal.bool_and(keys.greater_equal(first_key.reshape([layouts, seq, 1]).expand([layouts, seq, seq])));
        let bias = Tensor::<B, 3>::zeros([layouts, seq, seq], (device, DType::F32)).mask_fill(allowed.bool_not(), f32::NEG_INFINITY);
        Self { bias: bias.reshape([layouts, seq * seq]).cast(dtype) }
    }

    /// `scores`: [batch, heads, seq, seq] (contiguous) -> scores + the mask's bias.
    pub fn apply(&self, scores: Tensor<B, 4>) -> Tensor<B, 4> {
        let [batch, heads, seq, _] = scores.dims();
        let [layouts, _] = self.bias.dims();
        let scores = scores.reshape([batch * heads, seq * seq]);
        let biased = if layouts == 1 {
            scores + self.bias.clone() // one row broadcast: burn-flex's SIMD loop
        } else {
            (scores.reshape([batch, heads, seq * seq]) + self.bias.clone().unsqueeze_dim::<3>(1)).reshape([batch * heads, seq * seq])
        };
        biased.reshape([batch, heads, seq, seq])
    }
}

/// Panics unless q, k, v and the layout agree (the engine's own shapes: a mismatch is a bug).
fn check_shapes<B: Backend>(q: &Tensor<B, 4>, k: &Tensor<B, 4>, v: &Tensor<B, 4>, layout: &AttentionLayout) {
    let ([batch, heads, seq, head_dim], [kb, kv_heads, ks, kd]) = (q.dims(), k.dims());
    assert_eq!(k.dims(), v.dims(), "k and v have one shape");
    assert!(kb == batch && ks == seq && kd == head_dim, "q {:?} and k {:?} differ beyond their heads", q.dims(), k.dims());
    assert!(kv_heads > 0 && heads % kv_heads == 0, "{heads} query heads in groups over {kv_heads} kv heads");
    layout.check(batch, seq);
}

/// The grid that every fused path must pass against [`eager_attention`], for any autodiff backend.
#[cfg(test)]
pub(crate) mod grid {
    use burn::tensor::backend::AutodiffBackend;

    use super::*;

    /// One case: a batch of rows with their example starts, heads in groups, a window or none.
    struct Case {
        batch: usize,
        heads: usize,
        kv_heads: usize,
        seq: usize,
        head_dim: usize,
        starts: Vec<Vec<u32>>,
        window: Option<usize>,
    }

    fn cases() -> Vec<Case> {
        let case = |batch, heads, kv_heads, seq, head_dim, starts: &[&[u32]], window| Case {
            batch,
            heads,
            kv_heads,
            seq,
            head_dim,
            starts: starts.iter().map(|s| s.to_vec()).collect(),
            window,
        };
        vec![
            // Causal, one example per row, groups of 1.
            case(2, 2, 2, 37, 8, &[&[0]], None),
            // Groups of 4, rows with 3 and 1 examples (one layout per row).
            case(2, 8, 2, 130, 64, &[&[0, 50, 97], &[0]], None),
            // A window shorter than the examples.
            case(1, 8, 2, 150, 64, &[&[0, 70]], Some(16)),
            // A window longer than the examples, 1-3 examples per row, head_dim 128.
            case(2, 2, 2, 90, 128, &[&[0, 30, 61], &[0, 45]], Some(100)),
            // head_dim 128, groups of 4, one example longer than the window.
            case(1, 4, 1, 200, 128, &[&[0]], Some(70)),
            // Three tiles of the CPU kernel's 128 queries, whole tiles of keys before the window
            // or the second example skipped.
            case(1, 4, 2, 300, 64, &[&[0, 140]], Some(100)),
            // Each query sees itself and the key before it (with itself only, dq would be 0, and its
            // norm-relative error undefined); rows of two tokens.
            case(1, 2, 1, 67, 8, &[&[0, 10]], Some(2)),
            case(2, 4, 2, 2, 64, &[&[0]], None),
            // The sliding-window fixture's heads (groups of 3, head_dim 8, window 7), three rows.
            case(3, 6, 2, 40, 8, &[&[0, 13, 29], &[0, 5], &[0]], Some(7)),
        ]
    }

    /// Deterministic values in [-2, 2).
    pub(crate) fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 40) as f32 / (1u64 << 24) as f32 * 4.0 - 2.0
            })
            .collect()
    }

    pub(crate) type Attention<B> = fn(Tensor<B, 4>, Tensor<B, 4>, Tensor<B, 4>, &AttentionLayout, f64) -> Tensor<B, 4>;

    /// The output and the gradients of q, k, v under a weighted sum of the output, as f32.
    fn run<B: AutodiffBackend>(attention: Attention<B>, case: &Case, dtype: DType, device: &B::Device) -> [Vec<f32>; 4] {
        let q_dims = [case.batch, case.heads, case.seq, case.head_dim];
        let kv_dims = [case.batch, case.kv_heads, case.seq, case.head_dim];
        let tensor = |dims: [usize; 4], seed| {
            let data = TensorData::new(values(dims.iter().product(), seed), dims);
            Tensor::<B, 4>::from_data(data, (device, DType::F32)).cast(dtype)
        };
        let (q, k, v) = (tensor(q_dims, 1).require_grad(), tensor(kv_dims, 2).require_grad(), tensor(kv_dims, 3).require_grad());
        let layout = AttentionLayout::new(case.seq, &case.starts, case.window);
        let output = attention(q.clone(), k.clone(), v.clone(), &layout, 1.0 / (case.head_dim as f64).sqrt());
        assert_eq!((output.dims(), output.dtype()), (q_dims, dtype));
        let grads = (output.clone() * tensor(q_dims, 4)).sum().backward();
        let f32_values = |t: Tensor<B::InnerBackend, 4>| t.cast(DType::F32).into_data().into_vec::<f32>().unwrap();
        [
            f32_values(output.inner()),
            f32_values(q.grad(&grads).expect("q's gradient")),
            f32_values(k.grad(&grads).expect("k's gradient")),
            f32_values(v.grad(&grads).expect("v's gradient")),
        ]
    }

    /// ||a - b|| / ||b||.
    pub(crate) fn norm_relative(a: &[f32], b: &[f32]) -> f64 {
        let diff: f64 = a.iter().zip(b).map(|(&a, &b)| (f64::from(a) - f64::from(b)).powi(2)).sum();
        let norm: f64 = b.iter().map(|&b| f64::from(b).powi(2)).sum();
        (diff / norm.max(f64::MIN_POSITIVE)).sqrt()
    }

    /// Where `fused` on B differs most from [`eager_attention`] on B over the grid, in `dtype`:
    /// the largest norm-relative difference of the output or of the gradient of q, k or v.
    pub(crate) fn worst_difference_from_eager<B: AutodiffBackend>(fused: Attention<B>, dtype: DType, device: &B::Device) -> (f64, String) {
        worst_difference(|case| run(fused, case, dtype, device), |case| run(eager_attention::<B>, case, dtype, device))
    }

    /// [`assert_fused_matches_eager`] in f32 with the eager reference on burn-flex (the CPU), not on
    /// B: on burn-wgpu 0.21 over lavapipe the eager composition's own k gradient came out wrong
    /// when batch > 1 and the kv heads need no repeating (groups 1), where the fused kernel meets
    /// the CPU's answer (not traced; lavapipe's loop limit, docs/attention.md, may be the cause).
    #[cfg(feature = "wgpu")]
    pub(crate) fn assert_fused_matches_cpu_eager<B: AutodiffBackend>(fused: Attention<B>, tolerance: f64, device: &B::Device) {
        use burn::backend::{Autodiff, Flex};
        let eager_on_cpu = |case: &Case| run(eager_attention::<Autodiff<Flex>>, case, DType::F32, &Default::default());
        let (error, what) = worst_difference(|case| run(fused, case, DType::F32, device), eager_on_cpu);
        assert!(error < tolerance, "{what}: differs by {error:e} (norm-relative) from eager on the CPU, more than {tolerance:e}");
    }

    /// The largest norm-relative difference between `got_of` and `want_of` (output, dq, dk, dv)
    /// over the grid's cases, and where it is.
    fn worst_difference(got_of: impl Fn(&Case) -> [Vec<f32>; 4], want_of: impl Fn(&Case) -> [Vec<f32>; 4]) -> (f64, String) {
        let mut worst = (0.0, String::new());
        for case in cases() {
            let (got, want) = (got_of(&case), want_of(&case));
            for (name, (got, want)) in ["output", "dq", "dk", "dv"].iter().zip(got.iter().zip(&want)) {
                let Case { batch, heads, kv_heads, seq, head_dim, starts, window } = &case;
                let what = format!(
                    "{name}: batch {batch}, heads {heads}/{kv_heads}, seq {seq}, head_dim {head_dim}, starts {starts:?}, window {window:?}"
                );
                assert!(got.iter().all(|v| v.is_finite()), "{what}: not finite");
                let error = norm_relative(got, want);
                if error >= worst.0 {
                    worst = (error, what);
                }
            }
        }
        worst
    }

    /// `fused` on B agrees with [`eager_attention`] on B on every case of the grid, in `dtype`: the
    /// output and the gradients of q, k and v each within `tolerance`, norm-relative per tensor.
    pub(crate) fn assert_fused_matches_eager<B: AutodiffBackend>(fused: Attention<B>, dtype: DType, tolerance: f64, device: &B::Device) {
        let (error, what) = worst_difference_from_eager(fused, dtype, device);
        eprintln!("{dtype:?}: at worst {error:e} from eager (norm-relative), {what}");
        assert!(error < tolerance, "{what}: differs by {error:e} (norm-relative) from eager, more than {tolerance:e}");
    }
}

#[cfg(test)]
mod tests {
    use burn::backend::{Autodiff, Flex};

    use super::*;

    /// Query i sees key j iff both are in one example, j <= i, and i - j < window.
    #[test]
    fn layout_is_each_example_causal_within_the_window() {
        let (seq, window) = (10, 3);
        let starts = [vec![0, 3, 8], vec![0]];
        let layout = AttentionLayout::new(seq, &starts, Some(window));
        assert_eq!(layout.layouts, 2);
        for (r, row) in starts.iter().enumerate() {
            let example = |t: usize| row.iter().rposition(|&s| s as usize <= t).unwrap();
            for i in 0..seq {
                for j in 0..seq {
                    let sees = layout.row(r)[i] as usize <= j && j <= i;
                    assert_eq!(sees, example(i) == example(j) && j <= i && i - j < window, "row {r}: query {i}, key {j}");
                }
            }
        }
        // One layout shared by every row when all rows have the same starts.
        assert_eq!(AttentionLayout::new(4, &[vec![0, 2], vec![0, 2]], None).first_key, [0, 0, 2, 2]);
    }

    /// The eager mask is the layout's: 0 where the query sees the key, -inf elsewhere.
    #[test]
    fn eager_mask_is_the_layout() {
        let layout = AttentionLayout::new(6, &[vec![0, 2], vec![0]], Some(3));
        let bias = EagerMask::<Flex>::new(&layout, &Default::default(), DType::F32).bias.into_data().into_vec::<f32>().unwrap();
        for r in 0..2 {
            for i in 0..6 {
                for j in 0..6 {
                    let sees = layout.row(r)[i] as usize <= j && j <= i;
                    assert_eq!(bias[(r * 6 + i) * 6 + j], if sees { 0.0 } else { f32::NEG_INFINITY }, "row {r}: query {i}, key {j}");
                }
            }
        }
    }

    /// burn-flex's kernel (`attention_flex`) through the dispatch, on the grid.
    #[test]
    fn fused_matches_eager_on_burn_flex_in_f32() {
        grid::assert_fused_matches_eager::<Autodiff<Flex>>(fused_attention, DType::F32, 1e-6, &Default::default());
    }

    /// Only the cube kernels on a software Vulkan driver have a length limit.
    #[test]
    fn burn_flex_fits_any_length() {
        assert!(fused_attention_fits::<Autodiff<Flex>>(1 << 20, 32, 8, 128, true));
        assert!(fused_attention_fits::<Flex>(1 << 20, 32, 8, 128, false));
    }

    /// How far burn-flex's kernel in bf16 may lie from the eager attention in bf16 (norm-relative
    /// per tensor): about half of bf16's unit roundoff (2^-9 = 2.0e-3). Both round at the same
    /// points; their f32 sums differ in order, which moves a value across a bf16 rounding boundary
    /// now and then (1.2e-4 at worst on the grid). Attention
    /// in f32 of the same bf16 inputs lies 1.8e-3 to 5.9e-3 from eager bf16.
    const BF16_BOUND: f64 = 1e-3;

    /// The same in bf16.
    #[test]
    fn fused_matches_eager_on_burn_flex_in_bf16() {
        grid::assert_fused_matches_eager::<Autodiff<Flex>>(fused_attention, DType::BF16, BF16_BOUND, &Default::default());
    }

    /// The f32 attention of bf16 inputs (f32 copies of q, k and v, the output and gradients
    /// rounded once) fails that bound: it tells rounding as eager bf16 does from computing closer
    /// to the exact answer, which moves a bf16 run away from torch's bf16 one.
    #[test]
    fn f32_attention_of_bf16_inputs_lies_outside_the_bf16_bound() {
        let in_f32: grid::Attention<Autodiff<Flex>> = |q, k, v, layout, scale| {
            fused_attention(q.cast(DType::F32), k.cast(DType::F32), v.cast(DType::F32), layout, scale).cast(DType::BF16)
        };
        let (error, what) = grid::worst_difference_from_eager(in_f32, DType::BF16, &Default::default());
        eprintln!("f32 of bf16 inputs: at worst {error:e} from eager bf16, {what}");
        assert!(error > BF16_BOUND, "{what}: f32 attention of bf16 inputs within {error:e} of eager bf16");
    }
}
