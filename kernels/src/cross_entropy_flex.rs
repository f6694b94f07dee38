//! The next-token loss on burn-flex as one kernel, and its backward as another
//! ([`crate::cross_entropy_sum`]).
//!
//! burn's composite (narrow, log_softmax, gather, weights, sum, and each op's backward) makes
//! some fourteen passes over the [tokens, vocab] f32 logits, 65 MB per rank on the small
//! preset, and evaluated exp twice per element. Here the forward makes one pass per row (a row
//! stays in cache): it overwrites the logits with their softmax, kept for the backward, which
//! turns it in place into the gradient, `w g (softmax - onehot(target))`. Sums are in f64.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, unary};
use burn::backend::flex::{Flex, FlexTensor};
use burn::tensor::{Tensor, TensorData, backend::Backend};
use rayon::prelude::*;

use crate::LossRows;
use crate::flex::{self, f32_elements_mut};

/// The weighted sum over rows of -log softmax(logits)[target], for f32 logits [rows, vocab] on
/// burn-flex or autodiff over it.
pub(crate) fn cross_entropy_sum<B: Backend>(logits: Tensor<B, 2>, rows: LossRows) -> Tensor<B, 1> {
    flex::with_backward(logits, CrossEntropySum, |mut probabilities| {
        let loss = loss_tensor(softmax_in_place(&mut probabilities, &rows));
        (loss, (probabilities, rows))
    })
}

fn loss_tensor(loss: f64) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(vec![loss as f32], [1]))
}

/// Replaces each row of `logits` with its softmax; returns the weighted sum of the rows'
/// -log softmax at their target (in row order, so that a run repeats to the bit).
fn softmax_in_place(logits: &mut FlexTensor, rows: &LossRows) -> f64 {
    let values = f32_elements_mut(logits).expect("the loss takes contiguous f32 logits");
    let vocab = values.len() / rows.targets.len();
    let losses: Vec<f64> = values.par_chunks_mut(vocab).zip(&rows.targets).map(|(row, &target)| softmax_row(row, target)).collect();
    losses.iter().zip(&rows.weights).map(|(loss, &w)| f64::from(w) * loss).sum()
}

/// One row's softmax in place; returns -log softmax at `target`.
fn softmax_row(row: &mut [f32], target: usize) -> f64 {
    let picked = row[target];
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0f64;
    for x in row.iter_mut() {
        *x = (*x - max).exp();
        sum += f64::from(*x);
    }
    let inverse = 1.0 / sum;
    row.iter_mut().for_each(|x| *x = (f64::from(*x) * inverse) as f32);
    f64::from(max) + sum.ln() - f64::from(picked)
}

#[derive(Debug)]
struct CrossEntropySum;

impl Backward<Flex, 1> for CrossEntropySum {
    /// The softmax of the logits, and their rows' targets and weights.
    type State = (FlexTensor, LossRows);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (mut gradient, rows) = ops.state;
        unary::<Flex, _>(ops.parents, ops.node, grads, |grad_of_sum| {
            let scale = grad_of_sum.into_data().iter::<f32>().next().expect("the loss is one value");
            let values = f32_elements_mut(&mut gradient).expect("the softmax is contiguous f32");
            let vocab = values.len() / rows.targets.len();
            values.par_chunks_mut(vocab).zip(&rows.targets).zip(&rows.weights).for_each(|((row, &target), &w)| {
                let c = scale * w;
                row.iter_mut().for_each(|p| *p *= c);
                row[target] -= c;
            });
            gradient
        });
    }
}
