//! Next-token cross-entropy with HF's label convention (labels are not shifted; -100 is no loss).

use burn::tensor::{Tensor, backend::Backend};
use shard_core::IGNORE_INDEX;
use shard_kernels::LossRows;

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
/// `labels`: [batch, seq]. The logits are scored in f32.
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
    shard_kernels::cross_entropy_sum(logits, LossRows { targets, weights })
}
