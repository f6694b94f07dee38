//! What a dataset is made from: the source file, its format, the tokenizer and the row settings.

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::Fields;

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
    /// `{"instruction": ..., "input": ..., "output": ...}` in the Stanford Alpaca prompt: loss on
    /// the output only.
    Alpaca,
    /// Conversations as OpenAI (`messages`, `role`/`content`) or ShareGPT (`conversations`,
    /// `from`/`value`) write them, rendered with the tokenizer's chat template, or as `chat` where
    /// it has none: loss on the assistant turns only.
    Messages,
}

impl Format {
    pub fn needs_tokenizer(self) -> bool {
        self != Format::Tokenized
    }

    /// Whether examples are conversations, which an export's chat template should render.
    pub fn is_conversation(self) -> bool {
        matches!(self, Format::Chat | Format::Messages)
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
            Format::Alpaca => "alpaca",
            Format::Messages => "messages",
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
    /// The keys of the JSONL lines where they differ from the format's own (`data.fields`).
    pub fields: Fields,
    /// A `tokenizer.json`: needed by every format but `tokenized`, where it only decodes.
    pub tokenizer: Option<PathBuf>,
    /// A jinja chat template for `messages`, instead of the one the tokenizer ships with
    /// (`tokenizer_config.json` or `chat_template.jinja` beside `tokenizer.json`).
    pub chat_template: Option<PathBuf>,
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
