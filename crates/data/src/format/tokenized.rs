//! The `tokenized` format: `{"input_ids": [...], "labels": [...]}`, labels optional (then every
//! token carries loss), -100 for no loss, HF convention (not shifted: a label is its own token's id).

use serde::Deserialize;

use crate::{Example, IGNORE_INDEX};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)] // `labels` is optional: a misspelt key must not mean "loss everywhere"
struct TokenizedLine {
    input_ids: Vec<i64>,
    #[serde(default)]
    labels: Option<Vec<i64>>,
}

pub(super) fn encode(line: &[u8], vocab_size: usize) -> Result<Example, String> {
    let row: TokenizedLine = super::parse(line)?;
    if row.input_ids.is_empty() {
        return Err("empty example: `input_ids` is []".into());
    }
    if let Some((i, id)) = row.input_ids.iter().enumerate().find(|(_, t)| !(0..vocab_size as i64).contains(t)) {
        return Err(format!("input_ids[{i}] = {id} is outside the vocabulary (0..{vocab_size})"));
    }
    let labels = row.labels.unwrap_or_else(|| row.input_ids.clone());
    if labels.len() != row.input_ids.len() {
        return Err(format!("`labels` has {} entries, `input_ids` {}", labels.len(), row.input_ids.len()));
    }
    if let Some(i) = (0..labels.len()).find(|&i| labels[i] != IGNORE_INDEX && labels[i] != row.input_ids[i]) {
        return Err(format!(
            "labels[{i}] = {} is neither -100 nor input_ids[{i}] = {} (labels are not shifted: HF convention)",
            labels[i], row.input_ids[i]
        ));
    }
    Ok(Example { input_ids: row.input_ids.iter().map(|&t| t as u32).collect(), labels })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_default_to_the_ids() {
        let e = encode(b"{\"input_ids\": [1, 2, 3]}", 10).unwrap();
        assert_eq!(e, Example { input_ids: vec![1, 2, 3], labels: vec![1, 2, 3] });
        let e = encode(b"{\"input_ids\": [1, 2, 3], \"labels\": [-100, -100, 3]}", 10).unwrap();
        assert_eq!(e.labels, vec![-100, -100, 3]);
    }

    #[test]
    fn each_bad_input_says_why() {
        let cases = [
            ("{oops", "key must be a string (column 2)"),
            ("{\"input_ids\": []}", "empty example"),
            ("{\"input_ids\": [1, 12]}", "input_ids[1] = 12 is outside the vocabulary (0..10)"),
            ("{\"input_ids\": [-1]}", "input_ids[0] = -1 is outside"),
            ("{\"input_ids\": [1, 2], \"labels\": [1]}", "`labels` has 1 entries, `input_ids` 2"),
            ("{\"input_ids\": [1, 2], \"labels\": [2, -100]}", "labels[0] = 2 is neither -100 nor input_ids[0] = 1"),
            ("{\"ids\": [1]}", "unknown field `ids`"),
            ("{\"labels\": [1]}", "missing field `input_ids`"),
            ("{\"input_ids\": \"1 2\"}", "invalid type: string \"1 2\", expected a sequence"),
        ];
        for (line, expected) in cases {
            let msg = encode(line.as_bytes(), 10).unwrap_err();
            assert!(msg.contains(expected), "{msg:?} should contain {expected:?}");
        }
    }
}
