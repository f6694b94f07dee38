//! `[data.fields]`: the keys of a dataset whose lines name things otherwise, e.g.
//! `instruction = "question"` for `{"question": ..., "input": ..., "output": ...}` in the alpaca
//! format. A line's keys are renamed to the format's own before it is read.

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::Format;

/// The format's key (e.g. `instruction`) to the dataset's (e.g. `question`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Fields(pub BTreeMap<String, String>);

/// The keys of the message objects inside a conversation, renamed there rather than at the top.
const MESSAGE_KEYS: [&str; 2] = ["role", "content"];

impl Fields {
    /// The keys `format` reads, which are the ones `[data.fields]` may rename.
    pub fn keys_of(format: Format) -> &'static [&'static str] {
        match format {
            Format::Tokenized => &["input_ids", "labels"],
            Format::Text => &["text"],
            Format::PromptCompletion => &["prompt", "completion"],
            Format::Alpaca => &["instruction", "input", "output"],
            Format::Chat | Format::Messages => &["messages", "role", "content"],
        }
    }

    /// Each renamed key is one `format` reads: else why not, to follow `data.fields`.
    pub fn check(&self, format: Format) -> Result<(), String> {
        let known = Self::keys_of(format);
        match self.0.iter().find(|(key, _)| !known.contains(&key.as_str())) {
            Some((key, theirs)) => Err(format!(
                "has {key} = \"{theirs}\", but format = \"{format}\" reads no key `{key}`: it reads {}",
                known.iter().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", ")
            )),
            None => Ok(()),
        }
    }

    /// `line` with the dataset's keys renamed to the format's, or as it is without a mapping.
    pub(crate) fn rename<'a>(&self, line: &'a [u8]) -> Result<Cow<'a, [u8]>, String> {
        if self.0.is_empty() {
            return Ok(Cow::Borrowed(line));
        }
        let mut row: Value = super::parse(line)?;
        let (nested, top): (Vec<_>, Vec<_>) = self.0.iter().partition(|(ours, _)| MESSAGE_KEYS.contains(&ours.as_str()));
        rename_keys(&mut row, &top);
        // The list is under `messages` now (or ShareGPT's `conversations`).
        for list in ["messages", "conversations"] {
            if let Some(Value::Array(messages)) = row.get_mut(list) {
                messages.iter_mut().for_each(|m| rename_keys(m, &nested));
            }
        }
        Ok(Cow::Owned(serde_json::to_vec(&row).expect("a JSON value serializes")))
    }

    /// Where an error names one of the format's keys that the dataset spells otherwise, says so.
    pub(crate) fn explain(&self, why: String) -> String {
        match self.0.iter().find(|(ours, _)| why.contains(&format!("`{ours}`"))) {
            Some((ours, theirs)) => format!("{why} (read from `{theirs}`: data.fields.{ours} = \"{theirs}\")"),
            None => why,
        }
    }
}

/// Moves each `(ours, theirs)`: the value at key `theirs` to key `ours`, in an object.
fn rename_keys(value: &mut Value, renames: &[(&String, &String)]) {
    let Value::Object(object) = value else { return };
    for (ours, theirs) in renames {
        if let Some(v) = object.remove(theirs.as_str()) {
            object.insert((*ours).clone(), v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(pairs: &[(&str, &str)]) -> Fields {
        Fields(pairs.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect())
    }

    #[test]
    fn renames_top_level_and_message_keys() {
        let f = fields(&[("instruction", "question"), ("output", "answer")]);
        let line = f.rename(br#"{"question": "q", "input": "", "answer": "a"}"#).unwrap();
        let row: Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(row, serde_json::json!({"instruction": "q", "input": "", "output": "a"}));

        let f = fields(&[("messages", "dialog"), ("role", "speaker"), ("content", "text")]);
        let line = f.rename(br#"{"dialog": [{"speaker": "user", "text": "hi"}]}"#).unwrap();
        let row: Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(row, serde_json::json!({"messages": [{"role": "user", "content": "hi"}]}));
    }

    #[test]
    fn a_key_the_format_does_not_read_is_refused_by_name() {
        let msg = fields(&[("question", "q")]).check(Format::Alpaca).unwrap_err();
        assert_eq!(msg, "has question = \"q\", but format = \"alpaca\" reads no key `question`: it reads `instruction`, `input`, `output`");
        assert!(fields(&[("instruction", "q")]).check(Format::Alpaca).is_ok());
    }

    #[test]
    fn errors_about_a_renamed_key_name_the_datasets_key() {
        let f = fields(&[("instruction", "question")]);
        assert_eq!(
            f.explain("missing field `instruction`".into()),
            "missing field `instruction` (read from `question`: data.fields.instruction = \"question\")"
        );
    }
}
