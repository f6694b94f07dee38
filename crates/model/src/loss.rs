//! Next-token cross-entropy with HF's label convention (labels are not shifted; -100 is no loss).

use burn::tensor::{DType, Int, Tensor, TensorData, activation::log_softmax, backend::Backend};

/// Labels that carry no loss.
pub const IGNORE_INDEX: i64 = -100;

/// The number of target tokens in `labels` ([batch, seq], row-major): position t predicts t + 1.
pub fn target_count(labels: &[i64], seq: usize) -> usize {
    labels.chunks(seq).map(|row| row[1..].iter().filter(|&&l| l != IGNORE_INDEX).count()).sum()
}

/// The *sum* of next-token cross-entropies over every target token (a [1] tensor). Dividing by a
/// token count is left to the caller, which knows the count of the whole optimizer step.
pub fn cross_entropy_sum<B: Backend>(logits: Tensor<B, 3>, labels: &[i64]) -> Tensor<B, 1> {
    let [batch, seq, vocab] = logits.dims();
    assert_eq!(labels.len(), batch * seq, "labels must be [batch, seq]");
    let device = logits.device();
    let mut targets = Vec::with_capacity(batch * (seq - 1));
    let mut weights = Vec::with_capacity(batch * (seq - 1));
    for row in labels.chunks(seq) {
        for &label in &row[1..] {
            let counted = label != IGNORE_INDEX;
            targets.push(if counted { label } else { 0 });
            weights.push(if counted { 1.0f32 } else { 0.0 });
        }
    }
    let logits = logits.narrow(1, 0, seq - 1).reshape([batch * (seq - 1), vocab]);
    let logits = if logits.dtype() == DType::F32 { logits } else { logits.cast(DType::F32) };
    let targets = Tensor::<B, 2, Int>::from_data(TensorData::new(targets, [batch * (seq - 1), 1]), &device);
    let weights = Tensor::<B, 1>::from_data(TensorData::new(weights, [batch * (seq - 1)]), &device).cast(DType::F32);
    let picked = log_softmax(logits, 1).gather(1, targets).reshape([batch * (seq - 1)]);
    (picked * weights).sum().neg()
}
