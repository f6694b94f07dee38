//! Next-token cross-entropy with HF's label convention (labels are not shifted; -100 is no loss).

use burn::tensor::{DType, Int, Tensor, TensorData, activation::log_softmax, backend::Backend};

use crate::cross_entropy_flex::{self, Rows};
use crate::flex;

/// Labels that carry no loss.
pub const IGNORE_INDEX: i64 = -100;

/// The number of target tokens in `labels` ([batch, seq], row-major): position t predicts t + 1.
pub fn target_count(labels: &[i64], seq: usize) -> usize {
    labels.chunks(seq).map(|row| row[1..].iter().filter(|&&l| l != IGNORE_INDEX).count()).sum()
}

/// The positions of a [batch, seq, ...] hidden state whose logits the loss uses (all but the
/// last, which predicts nothing): computing the head on these alone skips the last position's
/// logits and a copy of all the others.
pub fn predicting_positions<B: Backend>(hidden: Tensor<B, 3>) -> Tensor<B, 3> {
    let seq = hidden.dims()[1];
    hidden.narrow(1, 0, seq - 1)
}

/// The *sum* of next-token cross-entropies over every target token (a [1] tensor). Dividing by a
/// token count is left to the caller, which knows the count of the whole optimizer step.
/// `logits`: [batch, seq, vocab], or [batch, seq - 1, vocab] for the predicting positions only;
/// `labels`: [batch, seq]. On burn-flex (and autodiff over it) one kernel computes it, see
/// `cross_entropy_flex`; elsewhere burn's tensor ops.
pub fn cross_entropy_sum<B: Backend>(logits: Tensor<B, 3>, labels: &[i64]) -> Tensor<B, 1> {
    let [batch, positions, vocab] = logits.dims();
    let seq = labels.len() / batch;
    assert_eq!(labels.len(), batch * seq, "labels must be [batch, seq]");
    assert!(positions == seq || positions == seq - 1, "logits of {positions} positions for labels of {seq}");
    let mut targets = Vec::with_capacity(batch * (seq - 1));
    let mut weights = Vec::with_capacity(batch * (seq - 1));
    for row in labels.chunks(seq) {
        for &label in &row[1..] {
            let counted = label != IGNORE_INDEX;
            targets.push(if counted { label as usize } else { 0 });
            weights.push(if counted { 1.0f32 } else { 0.0 });
        }
    }
    let logits = if positions == seq { logits.narrow(1, 0, seq - 1) } else { logits }.reshape([batch * (seq - 1), vocab]);
    let logits = if logits.dtype() == DType::F32 { logits } else { logits.cast(DType::F32) };
    let rows = Rows { targets, weights };
    if flex::is_flex_or_autodiff_flex::<B>() { cross_entropy_flex::cross_entropy_sum(logits, rows) } else { with_tensor_ops(logits, rows) }
}

/// The loss of f32 `logits` [rows, vocab] as burn tensor ops.
fn with_tensor_ops<B: Backend>(logits: Tensor<B, 2>, rows: Rows) -> Tensor<B, 1> {
    let (device, n) = (logits.device(), rows.targets.len());
    let targets = rows.targets.into_iter().map(|t| t as i64).collect();
    let targets = Tensor::<B, 2, Int>::from_data(TensorData::new(targets, [n, 1]), &device);
    let weights = Tensor::<B, 1>::from_data(TensorData::new(rows.weights, [n]), (&device, DType::F32));
    let picked = log_softmax(logits, 1).gather(1, targets).reshape([n]);
    (picked * weights).sum().neg()
}

#[cfg(test)]
mod tests {
    use burn::backend::{Autodiff, Flex};

    use super::*;

    /// burn-flex's one kernel and burn's tensor ops agree on the loss and its gradient.
    #[test]
    fn flex_kernel_matches_tensor_ops() {
        type Ad = Autodiff<Flex>;
        let (n, vocab) = (7, 33);
        let values: Vec<f32> = (0..n * vocab).map(|i| ((i * 7919) % 101) as f32 / 9.0 - 5.0).collect();
        let rows = Rows { targets: vec![3, 0, 32, 5, 5, 17, 1], weights: vec![1.0, 1.0, 0.0, 1.0, 1.0, 1.0, 1.0] };
        let run = |kernel: bool| {
            let logits = Tensor::<Ad, 2>::from_data(TensorData::new(values.clone(), [n, vocab]), &Default::default()).require_grad();
            let loss = if kernel {
                cross_entropy_flex::cross_entropy_sum(logits.clone(), rows.clone())
            } else {
                with_tensor_ops(logits.clone(), rows.clone())
            };
            let grads = loss.clone().mul_scalar(0.5).backward();
            let grad = logits.grad(&grads).unwrap().into_data().into_vec::<f32>().unwrap();
            (loss.into_scalar(), grad)
        };
        let ((loss, grad), (expected_loss, expected_grad)) = (run(true), run(false));
        assert!((loss - expected_loss).abs() <= 1e-6 * expected_loss.abs(), "{loss} vs {expected_loss}");
        let worst = grad.iter().zip(&expected_grad).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
        assert!(worst < 1e-7, "gradients differ by {worst}");
        assert!(grad[2 * vocab..3 * vocab].iter().all(|&g| g == 0.0), "a row without loss has no gradient");
        let untracked = cross_entropy_flex::cross_entropy_sum(
            Tensor::<Flex, 2>::from_data(TensorData::new(values.clone(), [n, vocab]), &Default::default()),
            rows.clone(),
        );
        assert_eq!(untracked.into_scalar(), loss, "the same loss without autodiff");
    }
}
