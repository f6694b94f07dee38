//! `[data]`: the training examples, their format and tokenizer, and how they become rows.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use shard_data::{Fields, Format, OnBadExample};

use super::invalid::{Check, invalid, not_a_file};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DataSection {
    /// The JSONL file.
    pub path: PathBuf,
    #[serde(default)]
    pub format: Format,
    /// The dataset's keys where they differ from the format's: `instruction = "question"`.
    #[serde(default, skip_serializing_if = "fields_are_the_formats")]
    pub fields: Fields,
    /// A tokenizer.json; by default the checkpoint's own (`<model.path>/tokenizer.json`).
    pub tokenizer: Option<PathBuf>,
    /// A jinja chat template for `format = "messages"`, instead of the tokenizer's own.
    pub chat_template: Option<PathBuf>,
    #[serde(default = "default_seq_len")]
    pub seq_len: usize,
    /// Pack whole examples, each closed by EOS and attending only to itself, into rows of at most
    /// `seq_len` tokens (docs/packing.md).
    #[serde(default)]
    pub packing: bool,
    #[serde(default)]
    pub on_bad_example: OnBadExample,
    #[serde(default = "default_true")]
    pub shuffle: bool,
    #[serde(default)]
    pub seed: u64,
}

fn default_seq_len() -> usize {
    1024
}

fn default_true() -> bool {
    true
}

fn fields_are_the_formats(fields: &Fields) -> bool {
    fields.0.is_empty()
}

impl DataSection {
    pub(super) fn validate(&self) -> Check {
        if self.seq_len < 2 {
            return invalid("data.seq_len", "must be at least 2 (a token and the one it predicts)");
        }
        if self.chat_template.is_some() && self.format != Format::Messages {
            return invalid("data.chat_template", format!("is read by format = \"messages\" only, not \"{}\"", self.format));
        }
        self.fields.check(self.format).or_else(|why| invalid("data.fields", why))
    }

    /// The data file and the tokenizer exist; `model_path` is the checkpoint the tokenizer would
    /// have come from.
    pub(super) fn check_runnable(&self, model_path: Option<&Path>) -> Check {
        if !self.path.is_file() {
            return invalid("data.path", not_a_file(&self.path));
        }
        if let Some(template) = self.chat_template.as_ref().filter(|t| !t.is_file()) {
            return invalid("data.chat_template", not_a_file(template));
        }
        match &self.tokenizer {
            Some(tokenizer) if !tokenizer.is_file() => invalid("data.tokenizer", not_a_file(tokenizer)),
            None if self.format.needs_tokenizer() => {
                let why = match model_path {
                    Some(dir) => format!("{} has no tokenizer.json", dir.display()),
                    None => "there is no model.path to take one from".into(),
                };
                invalid("data.tokenizer", format!("is needed for format = \"{}\" ({why})", self.format))
            }
            _ => Ok(()),
        }
    }
}
