//! The `tokenized` format: one JSON object per line, `{"input_ids": [...], "labels": [...]}`,
//! labels optional (then every token carries loss), -100 for no loss, HF convention (not shifted).

use std::path::Path;

use serde::Deserialize;

use crate::{DataError, Dataset, Example, IGNORE_INDEX};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenizedLine {
    input_ids: Vec<i64>,
    #[serde(default)]
    labels: Option<Vec<i64>>,
}

/// Reads every example, checking ids against `vocab_size` and cutting rows to `seq_len`.
pub fn read_tokenized(path: &Path, seq_len: usize, vocab_size: usize) -> Result<Dataset, DataError> {
    let text = std::fs::read_to_string(path).map_err(|source| DataError::Io { path: path.to_owned(), source })?;
    let mut examples = Vec::new();
    let mut truncated = 0;
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |why: String| DataError::BadExample { path: path.to_owned(), line: i + 1, why };
        let row: TokenizedLine = serde_json::from_str(line).map_err(|e| bad(e.to_string()))?;
        let labels = row.labels.unwrap_or_else(|| row.input_ids.clone());
        if row.input_ids.is_empty() {
            return Err(bad("empty example: `input_ids` is []".into()));
        }
        if labels.len() != row.input_ids.len() {
            return Err(bad(format!("`labels` has {} entries, `input_ids` {}", labels.len(), row.input_ids.len())));
        }
        if let Some(id) = row.input_ids.iter().find(|&&t| t < 0 || t as usize >= vocab_size) {
            return Err(bad(format!("token id {id} is outside the vocabulary (0..{vocab_size})")));
        }
        if let Some(l) = labels.iter().find(|&&l| l != IGNORE_INDEX && (l < 0 || l as usize >= vocab_size)) {
            return Err(bad(format!("label {l} is neither -100 nor a token id (0..{vocab_size})")));
        }
        let mut example = Example { input_ids: row.input_ids.iter().map(|&t| t as u32).collect(), labels };
        if example.input_ids.len() > seq_len {
            example.input_ids.truncate(seq_len);
            example.labels.truncate(seq_len);
            truncated += 1;
        }
        examples.push(example);
    }
    if examples.is_empty() {
        return Err(DataError::Empty(path.to_owned()));
    }
    Ok(Dataset { examples, truncated })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: &str) -> Result<Dataset, DataError> {
        let path = std::env::temp_dir().join(format!("tokenized-{}-{}.jsonl", std::process::id(), text.len()));
        std::fs::write(&path, text).unwrap();
        let result = read_tokenized(&path, 4, 10);
        std::fs::remove_file(&path).unwrap();
        result
    }

    #[test]
    fn reads_and_truncates() {
        let ds = read("{\"input_ids\": [1, 2, 3]}\n\n{\"input_ids\": [1,2,3,4,5,6], \"labels\": [-100,2,3,4,5,6]}\n").unwrap();
        assert_eq!(ds.examples[0].labels, vec![1, 2, 3]);
        assert_eq!(ds.examples[1].input_ids, vec![1, 2, 3, 4]);
        assert_eq!(ds.examples[1].labels, vec![-100, 2, 3, 4]);
        assert_eq!(ds.truncated, 1);
    }

    #[test]
    fn errors_name_the_line() {
        let cases = [
            ("{\"input_ids\": [1]}\n{\"input_ids\": [1, 12]}\n", ":2: token id 12"),
            ("{\"input_ids\": [1]}\n{oops\n", ":2: "),
            ("{\"input_ids\": []}\n", ":1: empty example"),
            ("{\"input_ids\": [1, 2], \"labels\": [1]}\n", ":1: `labels` has 1"),
            ("{\"ids\": [1]}\n", ":1: unknown field `ids`"),
            ("{\"input_ids\": \"1 2\"}\n", ":1: invalid type"),
        ];
        for (text, expected) in cases {
            let msg = read(text).unwrap_err().to_string();
            assert!(msg.contains(expected), "{msg:?} should contain {expected:?}");
        }
    }
}
