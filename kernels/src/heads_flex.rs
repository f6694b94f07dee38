//! Attention's head layout on burn-flex as one pass each way, for f32 ([`crate::split_heads`],
//! [`crate::merge_heads`]).
//!
//! The projections give [batch, seq, heads * head_dim]; attention's matmuls want
//! [batch, heads, seq, head_dim]. As tensor ops that is a transposed view that burn-flex makes
//! contiguous with its element-by-element strided iterator (a 4-D permutation does not collapse
//! to its tiled 2-D copy), then RoPE's cat, neg, two products and a sum, then `repeat_kv`'s copy
//! for grouped-query heads; and each again in backward. Here one pass moves each head_dim run
//! to its place, rotating it and repeating it for its group of query heads; the backward is the
//! transpose (inverse rotation, the group's gradients summed in order). The forward computes
//! RoPE with the same f32 operations as the tensor ops, so results are the same to the bit.

use std::sync::Arc;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, unary};
use burn::backend::flex::{Flex, FlexTensor};
use burn::tensor::{DType, Tensor, TensorData, backend::Backend};
use rayon::prelude::*;

use crate::flex;
use crate::heads::{Heads, RopeTables};

/// `x` [batch, seq, heads * head_dim] -> [batch, heads * groups, seq, head_dim], each head
/// rotated by `rope` when given and repeated `groups` times (head h * groups + g is head h).
pub(crate) fn split_heads<B: Backend>(x: Tensor<B, 3>, shape: Heads, rope: Option<Arc<RopeTables>>) -> Tensor<B, 4> {
    flex::with_backward(x, SplitHeads, |x| (to_heads(&x, shape, rope.as_deref()), (shape, rope)))
}

/// `x` [batch, heads, seq, head_dim] -> [batch, seq, heads * head_dim] (attention's output
/// before `o_proj`).
pub(crate) fn merge_heads<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 3> {
    let [batch, heads, seq, head_dim] = x.dims();
    let shape = Heads { batch, seq, heads, head_dim, groups: 1 };
    flex::with_backward(x, MergeHeads, |x| (from_heads(&x, shape, None), shape))
}

/// A 4-D f32 tensor read in place through its strides: autodiff hands the backward kernels
/// transposed views (the gradient of `k` comes through `k.swap_dims(2, 3)`), which burn-flex
/// would copy element by element to make contiguous.
struct Strided<'a> {
    values: &'a [f32],
    offset: usize,
    strides: [usize; 4],
}

impl<'a> Strided<'a> {
    /// `tensor` seen as `dims`, which split its last dimension in two when it has three
    /// ([batch, seq, heads * head_dim] as [batch, seq, heads, head_dim]).
    fn new(tensor: &'a FlexTensor, dims: [usize; 4]) -> Self {
        assert_eq!(tensor.dtype(), DType::F32, "the head kernels take f32");
        let layout = tensor.layout();
        let strides: Vec<usize> = layout.strides().iter().map(|&s| usize::try_from(s).expect("no flipped views")).collect();
        let strides = match strides[..] {
            [a, b, c] => [a, b, dims[3] * c, c],
            [a, b, c, d] => [a, b, c, d],
            _ => panic!("the head kernels take 3-D or 4-D tensors"),
        };
        Self { values: tensor.storage::<f32>(), offset: layout.start_offset(), strides }
    }

    /// The run along the last dimension at `[i, j, k, ..]`, into `out`.
    fn read(&self, [i, j, k]: [usize; 3], out: &mut [f32]) {
        let [a, b, c, d] = self.strides;
        let start = self.offset + i * a + j * b + k * c;
        if d == 1 {
            out.copy_from_slice(&self.values[start..][..out.len()]);
        } else {
            out.iter_mut().enumerate().for_each(|(n, o)| *o = self.values[start + n * d]);
        }
    }
}

/// [batch, seq, heads, head_dim] -> [batch, heads * groups, seq, head_dim], rotated.
fn to_heads(x: &FlexTensor, shape: Heads, rope: Option<&RopeTables>) -> FlexTensor {
    let Heads { batch, seq, heads, head_dim: d, groups } = shape;
    let x = Strided::new(x, [batch, seq, heads, d]);
    let mut out = vec![0f32; batch * seq * heads * d * groups];
    // One output block per (batch, output head): seq runs of head_dim.
    out.par_chunks_mut(seq * d).enumerate().for_each_init(
        || vec![0f32; d],
        |run, (block, out)| {
            let (b, head) = (block / (heads * groups), block % (heads * groups) / groups);
            for (t, out) in out.chunks_exact_mut(d).enumerate() {
                match rope {
                    Some(rope) => {
                        x.read([b, t, head], run);
                        let (cos, sin) = rope.at(b, t, d);
                        rotate(run, cos, sin, out);
                    }
                    None => x.read([b, t, head], out),
                }
            }
        },
    );
    FlexTensor::from_data(TensorData::new(out, [batch, heads * groups, seq, d]))
}

/// The transpose of [`to_heads`]: [batch, heads * groups, seq, head_dim] ->
/// [batch, seq, heads * head_dim], inverse-rotated, each group summed in order.
fn from_heads(y: &FlexTensor, shape: Heads, rope: Option<&RopeTables>) -> FlexTensor {
    let Heads { batch, seq, heads, head_dim: d, groups } = shape;
    let y = Strided::new(y, [batch, heads * groups, seq, d]);
    let mut out = vec![0f32; batch * seq * heads * d];
    // One output row per (batch, position): heads runs of head_dim.
    out.par_chunks_mut(heads * d).enumerate().for_each_init(
        || (vec![0f32; d], vec![0f32; d]),
        |(run, rotated), (row, out)| {
            let (b, t) = (row / seq, row % seq);
            for (head, out) in out.chunks_exact_mut(d).enumerate() {
                for g in 0..groups {
                    y.read([b, head * groups + g, t], run);
                    let run = match rope {
                        Some(rope) => {
                            let (cos, sin) = rope.at(b, t, d);
                            rotate_back(run, cos, sin, rotated);
                            &rotated[..]
                        }
                        None => &run[..],
                    };
                    if g == 0 {
                        out.copy_from_slice(run);
                    } else {
                        out.iter_mut().zip(run).for_each(|(o, v)| *o += v);
                    }
                }
            }
        },
    );
    FlexTensor::from_data(TensorData::new(out, [batch, seq, heads * d]))
}

/// x * cos + rotate_half(x) * sin, rotate_half(x) = [-x2, x1]: each product and the sum
/// rounded in f32, as the tensor ops do.
fn rotate(x: &[f32], cos: &[f32], sin: &[f32], out: &mut [f32]) {
    let half = x.len() / 2;
    for i in 0..x.len() {
        let rotated = if i < half { -x[i + half] } else { x[i - half] };
        out[i] = x[i] * cos[i] + rotated * sin[i];
    }
}

/// The transpose of [`rotate`] (its gradient): dy * cos + rotate_half^T(dy * sin).
fn rotate_back(dy: &[f32], cos: &[f32], sin: &[f32], out: &mut [f32]) {
    let half = dy.len() / 2;
    for j in 0..dy.len() {
        let rotated = if j < half { dy[j + half] * sin[j + half] } else { -(dy[j - half] * sin[j - half]) };
        out[j] = dy[j] * cos[j] + rotated;
    }
}

#[derive(Debug)]
struct SplitHeads;

impl Backward<Flex, 1> for SplitHeads {
    type State = (Heads, Option<Arc<RopeTables>>);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (shape, rope) = ops.state;
        unary::<Flex, _>(ops.parents, ops.node, grads, |grad| from_heads(&grad, shape, rope.as_deref()));
    }
}

#[derive(Debug)]
struct MergeHeads;

impl Backward<Flex, 1> for MergeHeads {
    type State = Heads;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        unary::<Flex, _>(ops.parents, ops.node, grads, |grad| to_heads(&grad, ops.state, None));
    }
}
