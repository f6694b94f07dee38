//! Examples and right-padded micro-batches.

use crate::IGNORE_INDEX;

/// One training sequence: token ids and, per position, the label (the id itself, or
/// [`IGNORE_INDEX`] where there is no loss). HF convention: not shifted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Example {
    pub input_ids: Vec<u32>,
    pub labels: Vec<i64>,
}

/// A micro-batch: `rows` sequences of `seq` tokens, row-major. Rows shorter than the longest
/// are right-padded with `pad_id`; padding carries no loss, and with causal attention it cannot
/// change the outputs at real positions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    pub rows: usize,
    pub seq: usize,
    pub input_ids: Vec<i64>,
    pub labels: Vec<i64>,
    /// Real (not padding) tokens.
    pub tokens: usize,
}

impl Batch {
    pub fn from_examples(examples: &[&Example], pad_id: u32) -> Self {
        let seq = examples.iter().map(|e| e.input_ids.len()).max().unwrap_or(0);
        let mut input_ids = Vec::with_capacity(examples.len() * seq);
        let mut labels = Vec::with_capacity(examples.len() * seq);
        for e in examples {
            let pad = seq - e.input_ids.len();
            input_ids.extend(e.input_ids.iter().map(|&t| t as i64));
            input_ids.extend(std::iter::repeat_n(pad_id as i64, pad));
            labels.extend(&e.labels);
            labels.extend(std::iter::repeat_n(IGNORE_INDEX, pad));
        }
        let tokens = examples.iter().map(|e| e.input_ids.len()).sum();
        Self { rows: examples.len(), seq, input_ids, labels, tokens }
    }

    /// Tokens that are predicted (a label other than IGNORE_INDEX at the next position).
    pub fn target_tokens(&self) -> usize {
        self.labels.chunks(self.seq.max(1)).map(|row| row.iter().skip(1).filter(|&&l| l != IGNORE_INDEX).count()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pads_right_without_loss() {
        let a = Example { input_ids: vec![1, 5, 6], labels: vec![-100, 5, 6] };
        let b = Example { input_ids: vec![1, 7], labels: vec![1, 7] };
        let batch = Batch::from_examples(&[&a, &b], 0);
        assert_eq!(batch.seq, 3);
        assert_eq!(batch.input_ids, vec![1, 5, 6, 1, 7, 0]);
        assert_eq!(batch.labels, vec![-100, 5, 6, 1, 7, -100]);
        assert_eq!(batch.target_tokens(), 3);
        assert_eq!(batch.tokens, 5);
    }
}
