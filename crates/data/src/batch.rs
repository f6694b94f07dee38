//! Examples, the rows they are trained in, and right-padded micro-batches.

use crate::IGNORE_INDEX;

/// One training sequence: token ids and, per position, the label (the id itself, or
/// [`IGNORE_INDEX`] where there is no loss). HF convention: not shifted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Example {
    pub input_ids: Vec<u32>,
    pub labels: Vec<i64>,
}

/// A row as training sees it: one example, or several packed one after the other. Each example
/// attends only to itself, its positions start at 0, and its first token is never a target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub input_ids: Vec<u32>,
    pub labels: Vec<i64>,
    /// Where each example starts (`[0]` for a row of one example), as flash-attention's varlen
    /// `cu_seqlens` without the end.
    pub starts: Vec<u32>,
}

impl From<Example> for Row {
    fn from(e: Example) -> Self {
        Self { input_ids: e.input_ids, labels: e.labels, starts: vec![0] }
    }
}

/// A micro-batch: `rows` sequences of `seq` tokens, row-major. Rows shorter than the longest
/// are right-padded with `pad_id`; padding carries no loss, and with causal attention it cannot
/// change the outputs at real positions (it belongs to the row's last example).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    pub rows: usize,
    pub seq: usize,
    pub input_ids: Vec<i64>,
    pub labels: Vec<i64>,
    /// Per row, where its examples start ([`Row::starts`]): what attention's block-diagonal mask
    /// and the restarting RoPE positions are made from.
    pub starts: Vec<Vec<u32>>,
    /// Real (not padding) tokens.
    pub tokens: usize,
}

impl Batch {
    pub fn from_rows(rows: &[&Row], pad_id: u32) -> Self {
        let seq = rows.iter().map(|r| r.input_ids.len()).max().unwrap_or(0);
        let mut input_ids = Vec::with_capacity(rows.len() * seq);
        let mut labels = Vec::with_capacity(rows.len() * seq);
        for r in rows {
            let pad = seq - r.input_ids.len();
            input_ids.extend(r.input_ids.iter().map(|&t| t as i64));
            input_ids.extend(std::iter::repeat_n(pad_id as i64, pad));
            labels.extend(&r.labels);
            labels.extend(std::iter::repeat_n(IGNORE_INDEX, pad));
        }
        let tokens = rows.iter().map(|r| r.input_ids.len()).sum();
        let starts = rows.iter().map(|r| r.starts.clone()).collect();
        Self { rows: rows.len(), seq, input_ids, labels, starts, tokens }
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
        let a = Row::from(Example { input_ids: vec![1, 5, 6], labels: vec![-100, 5, 6] });
        let b = Row { input_ids: vec![1, 7], labels: vec![1, 7], starts: vec![0, 1] };
        let batch = Batch::from_rows(&[&a, &b], 0);
        assert_eq!(batch.seq, 3);
        assert_eq!(batch.input_ids, vec![1, 5, 6, 1, 7, 0]);
        assert_eq!(batch.labels, vec![-100, 5, 6, 1, 7, -100]);
        assert_eq!(batch.target_tokens(), 3);
        assert_eq!(batch.tokens, 5);
        assert_eq!(batch.starts, vec![vec![0], vec![0, 1]]);
    }
}
