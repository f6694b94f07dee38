//! One JSONL line to one example, for each `data.format`. Errors here are the `why` of a line;
//! the caller adds the file and line number.

mod alpaca;
mod chat;
mod fields;
mod messages;
mod prompt;
mod template;
mod text;
mod tokenized;

use serde::Deserialize;

pub use fields::Fields;
pub use prompt::Prompts;
use template::ChatTemplate;
pub use template::{MISTRAL_CHAT_TEMPLATE, TemplateSource};

use crate::{DataError, DataSpec, Example, Format, IGNORE_INDEX, Specials, TextTokenizer};

/// Turns the lines of one dataset into examples (before truncation).
pub(crate) struct LineEncoder<'a> {
    encoding: Encoding<'a>,
    fields: Fields,
}

/// How one format turns a line into an example.
enum Encoding<'a> {
    Tokenized {
        vocab_size: usize,
    },
    Text(Framing<'a>),
    PromptCompletion(Framing<'a>),
    Chat(Framing<'a>),
    Alpaca(Framing<'a>),
    /// With the chat template, where there is one.
    Messages(Framing<'a>, Option<Box<ChatTemplate>>),
}

impl<'a> LineEncoder<'a> {
    /// `tokenizer` is needed by every format but `tokenized`.
    pub fn new(spec: &DataSpec, tokenizer: Option<&'a TextTokenizer>, specials: Specials) -> Result<Self, DataError> {
        let format = spec.format;
        spec.fields.check(format).map_err(|why| DataError::Setup(format!("data.fields {why}")))?;
        let fields = spec.fields.clone();
        if format == Format::Tokenized {
            return Ok(Self { encoding: Encoding::Tokenized { vocab_size: spec.vocab_size }, fields });
        }
        let missing = |what: &str| DataError::Setup(format!("format = \"{format}\" needs {what}"));
        let framing = Framing {
            tokenizer: tokenizer.ok_or_else(|| missing("a tokenizer (data.tokenizer)"))?,
            bos: specials.bos,
            eos: specials.eos.ok_or_else(|| missing("an EOS token"))?,
        };
        let encoding = match format {
            Format::Tokenized => unreachable!("handled above"),
            Format::Text => Encoding::Text(framing),
            Format::PromptCompletion => Encoding::PromptCompletion(framing),
            Format::Chat => Encoding::Chat(framing),
            Format::Alpaca => Encoding::Alpaca(framing),
            Format::Messages => {
                let template = match TemplateSource::find(spec.chat_template.as_deref(), spec.tokenizer.as_deref())? {
                    Some(source) => Some(Box::new(framing.template(&source)?)),
                    None => None,
                };
                Encoding::Messages(framing, template)
            }
        };
        Ok(Self { encoding, fields })
    }

    pub fn encode(&self, line: &[u8]) -> Result<Example, String> {
        let line = self.fields.rename(line)?;
        let line = line.as_ref();
        let encoded = match &self.encoding {
            Encoding::Tokenized { vocab_size } => tokenized::encode(line, *vocab_size),
            Encoding::Text(framing) => text::encode_text(line, framing),
            Encoding::PromptCompletion(framing) => text::encode_prompt_completion(line, framing),
            Encoding::Chat(framing) => chat::encode(line, framing),
            Encoding::Alpaca(framing) => alpaca::encode(line, framing),
            Encoding::Messages(framing, template) => messages::encode(line, framing, template.as_deref()),
        };
        encoded.map_err(|why| self.fields.explain(why))
    }
}

/// The tokenizer with the BOS and EOS that frame each example of a text format.
pub(crate) struct Framing<'a> {
    tokenizer: &'a TextTokenizer,
    bos: Option<u32>,
    eos: u32,
}

impl Framing<'_> {
    /// `source` compiled, rendered with the BOS and EOS that frame the other formats' examples.
    fn template(&self, source: &TemplateSource) -> Result<ChatTemplate, DataError> {
        let bos = self.bos.and_then(|id| self.tokenizer.token(id)).unwrap_or_default();
        let eos = self.tokenizer.token(self.eos).unwrap_or_default();
        ChatTemplate::new(source, bos, eos)
    }

    /// An example that has only its BOS (no loss: it is given, never predicted).
    fn start(&self) -> Pieces<'_> {
        let mut pieces = Pieces { framing: self, example: Example { input_ids: Vec::new(), labels: Vec::new() } };
        if let Some(bos) = self.bos {
            pieces.push(&[bos], false);
        }
        pieces
    }
}

/// An example put together from separately tokenized pieces, each with or without loss.
struct Pieces<'a> {
    framing: &'a Framing<'a>,
    example: Example,
}

impl Pieces<'_> {
    fn push(&mut self, ids: &[u32], loss: bool) {
        self.example.input_ids.extend_from_slice(ids);
        self.example.labels.extend(ids.iter().map(|&t| if loss { t as i64 } else { IGNORE_INDEX }));
    }

    fn text(&mut self, text: &str, loss: bool) -> Result<&mut Self, String> {
        let ids = self.framing.tokenizer.encode(text)?;
        self.push(&ids, loss);
        Ok(self)
    }

    fn eos(&mut self, loss: bool) -> &mut Self {
        self.push(&[self.framing.eos], loss);
        self
    }
}

/// Parses a line, with serde's message and the column (the line is the caller's).
fn parse<'de, T: Deserialize<'de>>(line: &'de [u8]) -> Result<T, String> {
    serde_json::from_slice(line).map_err(|e| {
        let message = e.to_string();
        let position = format!(" at line {} column {}", e.line(), e.column());
        format!("{} (column {})", message.strip_suffix(&position).unwrap_or(&message), e.column())
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::tokenizer::tests::{mistral, spec};

    /// The Mistral tokenizer framed with `<s>` and `</s>`.
    pub(crate) fn encode_with_mistral(format: Format, line: &str) -> Result<Example, String> {
        let tok = mistral();
        let encoder = LineEncoder::new(&spec(format), Some(&tok), Specials { bos: Some(1), eos: Some(2) }).unwrap();
        encoder.encode(line.as_bytes())
    }

    /// The ids of the positions that carry loss, and those that do not.
    pub(crate) fn split_by_loss(example: &Example) -> (Vec<u32>, Vec<u32>) {
        let with = example.input_ids.iter().zip(&example.labels).filter(|(_, l)| **l != IGNORE_INDEX);
        let without = example.input_ids.iter().zip(&example.labels).filter(|(_, l)| **l == IGNORE_INDEX);
        (with.map(|(t, _)| *t).collect(), without.map(|(t, _)| *t).collect())
    }

    #[test]
    fn json_errors_give_the_column_not_serde_line_1() {
        let msg = parse::<serde_json::Value>(b"{\"text\": oops}").unwrap_err();
        assert_eq!(msg, "expected value (column 10)");
    }

    #[test]
    fn text_formats_need_a_tokenizer() {
        let specials = Specials { bos: None, eos: Some(2) };
        let err = LineEncoder::new(&spec(Format::Chat), None, specials).err().unwrap();
        assert!(err.to_string().contains("data.tokenizer"), "{err}");
    }
}
