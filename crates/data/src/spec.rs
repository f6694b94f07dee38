//! What a dataset is made from: the source file, its format, the tokenizer and the row settings.

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The shape of each JSONL line (`data.format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// `{"input_ids": [...], "labels": [...]}`, labels optional, -100 = no loss.
    #[default]
    Tokenized,
    /// `{"text": "..."}`: loss on every token.
    Text,
    /// `{"prompt": "...", "completion": "..."}`: loss on the completion only.
    PromptCompletion,
    /// `{"messages": [{"role": ..., "content": ...}]}` in the Mistral-Instruct chat format: loss
    /// on the assistant turns only.
    Chat,
}

impl Format {
    pub fn needs_tokenizer(self) -> bool {
        self != Format::Tokenized
    }
}

/// The name as written in the run config.
impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Format::Tokenized => "tokenized",
            Format::Text => "text",
            Format::PromptCompletion => "prompt_completion",
            Format::Chat => "chat",
        })
    }
}

/// What to do with a line that cannot be an example (`data.on_bad_example`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnBadExample {
    /// Stop with the file and line.
    #[default]
    Error,
    /// Leave the line out and count it.
    Skip,
}

/// Everything that decides a dataset's rows.
#[derive(Debug, Clone, PartialEq)]
pub struct DataSpec {
    /// The JSONL file.
    pub source: PathBuf,
    pub format: Format,
    /// A `tokenizer.json`: needed by every format but `tokenized`, where it only decodes.
    pub tokenizer: Option<PathBuf>,
    /// Examples (with their EOS when packing) are cut to this many tokens; no row is longer.
    pub seq_len: usize,
    /// Whole examples, each closed by EOS, packed into rows of at most `seq_len` tokens
    /// (first-fit decreasing); each example in a row attends only to itself.
    pub packing: bool,
    pub on_bad_example: OnBadExample,
    /// Token ids must lie in `0..vocab_size` (the model's embedding rows).
    pub vocab_size: usize,
    /// `bos_token_id` of the model's config.json, if it has one.
    pub bos_token_id: Option<u32>,
    /// `eos_token_id` of the model's config.json, if it has one.
    pub eos_token_id: Option<u32>,
}
