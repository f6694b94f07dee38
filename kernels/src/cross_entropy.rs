//! The summed cross-entropy of rows of logits against their targets, in f32: on burn-flex one
//! kernel each way (`cross_entropy_flex`); elsewhere burn's tensor ops, which are the reference.

use burn::tensor::{DType, Int, Tensor, TensorData, activation::log_softmax, backend::Backend};

use crate::{cross_entropy_flex, flex};

/// What each row of logits is scored against: its target token and its weight (0 for a label
/// that carries no loss).
#[derive(Debug, Clone)]
pub struct LossRows {
    pub targets: Vec<usize>,
    pub weights: Vec<f32>,
}

/// The weighted sum over rows of -log softmax(logits)[target] (a [1] tensor), for `logits`
/// [rows, vocab] in any dtype, scored in f32.
pub fn cross_entropy_sum<B: Backend>(logits: Tensor<B, 2>, rows: LossRows) -> Tensor<B, 1> {
    let logits = if logits.dtype() == DType::F32 { logits } else { logits.cast(DType::F32) };
    if flex::f32_kernels_apply::<B>(logits.dtype()) {
        cross_entropy_flex::cross_entropy_sum(logits, rows)
    } else {
        cross_entropy_sum_with_tensor_ops(logits, rows)
    }
}

/// The loss of f32 `logits` [rows, vocab] as burn tensor ops.
fn cross_entropy_sum_with_tensor_ops<B: Backend>(logits: Tensor<B, 2>, rows: LossRows) -> Tensor<B, 1> {
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
        let rows = LossRows { targets: vec![3, 0, 32, 5, 5, 17, 1], weights: vec![1.0, 1.0, 0.0, 1.0, 1.0, 1.0, 1.0] };
        let run = |kernel: bool| {
            let logits = Tensor::<Ad, 2>::from_data(TensorData::new(values.clone(), [n, vocab]), &Default::default()).require_grad();
            let loss = if kernel {
                cross_entropy_flex::cross_entropy_sum(logits.clone(), rows.clone())
            } else {
                cross_entropy_sum_with_tensor_ops(logits.clone(), rows.clone())
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
