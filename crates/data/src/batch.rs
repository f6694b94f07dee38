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

/// What decides how rows become a micro-batch.
#[derive(Debug, Clone, Copy)]
pub struct BatchRules {
    pub pad_id: u32,
    /// No row of a micro-batch is longer.
    pub seq_len: usize,
    /// The model's hidden size, which weighs the projections against attention.
    pub hidden_size: usize,
}

impl Batch {
    /// The micro-batch of `rows`: right-padded to the longest ([`Batch::padded`]), or laid out one
    /// after the other as one row ([`Batch::one_row`]) where they fit in `seq_len` and that costs
    /// fewer multiply-adds: the padding saved in every projection against a longer attention.
    pub fn new(rows: &[&Row], rules: &BatchRules) -> Self {
        let longest = rows.iter().map(|r| r.input_ids.len()).max().unwrap_or(0);
        let total = rows.iter().map(|r| r.input_ids.len()).sum::<usize>();
        let cost = |tokens: usize, row_len: usize| tokens as f64 * multiply_adds_per_token(rules.hidden_size, row_len);
        if rows.len() > 1 && total <= rules.seq_len && cost(total, total) < cost(rows.len() * longest, longest) {
            Self::one_row(rows, rules.pad_id)
        } else {
            Self::padded(rows, rules.pad_id)
        }
    }

    /// Each row its own, right-padded to the longest.
    pub fn padded(rows: &[&Row], pad_id: u32) -> Self {
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

    /// The rows one after the other as a single row without padding, each example still on its
    /// own (its start kept, its first token no target): the same training as [`Batch::padded`].
    pub fn one_row(rows: &[&Row], pad_id: u32) -> Self {
        let mut row = Row { input_ids: Vec::new(), labels: Vec::new(), starts: Vec::new() };
        for r in rows {
            let offset = row.input_ids.len() as u32;
            row.starts.extend(r.starts.iter().map(|s| s + offset));
            row.input_ids.extend(&r.input_ids);
            row.labels.extend(&r.labels);
            for &s in &r.starts {
                row.labels[(offset + s) as usize] = IGNORE_INDEX;
            }
        }
        Self::padded(&[&row], pad_id)
    }

    /// Tokens that are predicted (a label other than IGNORE_INDEX at the next position).
    pub fn target_tokens(&self) -> usize {
        self.labels.chunks(self.seq.max(1)).map(|row| row.iter().skip(1).filter(|&&l| l != IGNORE_INDEX).count()).sum()
    }
}

/// Multiply-adds of one token's forward in a row of `row_len` tokens, for Mistral's shapes: the
/// projections about 13 h^2 (q and o h^2 each, k and v h^2 / 4 each with a quarter of the heads,
/// gate, up and down 3.5 h^2 each) and attention 2 h row_len (scores and their weighted sum).
fn multiply_adds_per_token(hidden: usize, row_len: usize) -> f64 {
    let h = hidden as f64;
    13.0 * h * h + 2.0 * h * row_len as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pads_right_without_loss() {
        let a = Row::from(Example { input_ids: vec![1, 5, 6], labels: vec![-100, 5, 6] });
        let b = Row { input_ids: vec![1, 7], labels: vec![1, 7], starts: vec![0, 1] };
        let batch = Batch::padded(&[&a, &b], 0);
        assert_eq!(batch.seq, 3);
        assert_eq!(batch.input_ids, vec![1, 5, 6, 1, 7, 0]);
        assert_eq!(batch.labels, vec![-100, 5, 6, 1, 7, -100]);
        assert_eq!(batch.target_tokens(), 3);
        assert_eq!(batch.tokens, 5);
        assert_eq!(batch.starts, vec![vec![0], vec![0, 1]]);
    }

    /// Short rows beside a long one are laid out as one row, their examples' starts kept and
    /// their first tokens no target; rows of one length, or too long together, stay padded.
    #[test]
    fn one_row_where_padding_costs_more() {
        let row = |n: usize, first: u32| Row { input_ids: (first..first + n as u32).collect(), labels: vec![5; n], starts: vec![0] };
        let (long, short, packed) = (row(10, 0), row(3, 20), Row { starts: vec![0, 2], ..row(4, 30) });
        let rules = BatchRules { pad_id: 0, seq_len: 32, hidden_size: 64 };
        let batch = Batch::new(&[&long, &short, &packed], &rules);
        assert_eq!((batch.rows, batch.seq, batch.tokens), (1, 17, 17));
        assert_eq!(batch.starts, vec![vec![0, 10, 13, 15]]);
        let targets: Vec<bool> = batch.labels.iter().map(|&l| l != IGNORE_INDEX).collect();
        assert_eq!(targets.iter().filter(|&&t| !t).count(), 4, "each example's first token");
        assert!(!targets[0] && !targets[10] && !targets[13] && !targets[15]);
        assert_eq!(batch.target_tokens(), 13);
        assert_eq!(Batch::new(&[&long, &long], &rules), Batch::padded(&[&long, &long], 0), "no padding to save");
        assert_eq!(Batch::new(&[&long, &short], &BatchRules { seq_len: 12, ..rules }).rows, 2, "longer than seq_len together");
    }
}
