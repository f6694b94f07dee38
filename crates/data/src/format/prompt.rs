//! Prompts to generate from, framed as training frames the same text: BOS and the text (no EOS),
//! or a conversation in the chat format up to its last user turn (`[INST] ... [/INST]`), so that
//! a fine-tuned model sees what it was trained to continue.

use std::path::PathBuf;

use serde_json::Value;

use super::{Framing, chat};
use crate::{DataError, DataSpec, Format, OnBadExample, Specials, TextTokenizer};

pub struct Prompts<'a> {
    framing: Framing<'a>,
}

impl<'a> Prompts<'a> {
    /// `tokenizer` checked against the model's vocabulary and BOS as a training run checks it.
    pub fn new(
        tokenizer: &'a TextTokenizer,
        vocab_size: usize,
        bos_token_id: Option<u32>,
        eos_token_id: Option<u32>,
    ) -> Result<Self, DataError> {
        let spec = DataSpec {
            source: PathBuf::new(),
            format: Format::Chat,
            fields: Default::default(),
            tokenizer: None,
            chat_template: None,
            seq_len: usize::MAX,
            packing: false,
            on_bad_example: OnBadExample::Error,
            vocab_size,
            bos_token_id,
            eos_token_id,
        };
        let specials = Specials::resolve(&spec, Some(tokenizer))?;
        let eos = specials.eos.expect("resolve finds an EOS for a text format");
        Ok(Self { framing: Framing { tokenizer, bos: specials.bos, eos } })
    }

    /// BOS and `text`.
    pub fn text(&self, text: &str) -> Result<Vec<u32>, String> {
        let mut pieces = self.framing.start();
        pieces.text(text, false)?;
        Ok(pieces.example.input_ids)
    }

    /// `user`'s message as the one turn of a conversation.
    pub fn chat(&self, user: &str) -> Result<Vec<u32>, String> {
        let line = serde_json::json!({ "messages": [{ "role": "user", "content": user }] });
        chat::encode_prompt(line.to_string().as_bytes(), &self.framing)
    }

    /// A JSONL line in a training format, as a prompt: `{"messages": [...]}` up to its last user
    /// turn, the `prompt` of `{"prompt": ...}` (a `completion` is left out), or `{"text": ...}`.
    pub fn line(&self, line: &[u8]) -> Result<Vec<u32>, String> {
        let row: Value = super::parse(line)?;
        let field = |key: &str| row.get(key).map(|v| v.as_str().ok_or_else(|| format!("`{key}` is {v}, expected a string")));
        if row.get("messages").is_some() {
            chat::encode_prompt(line, &self.framing)
        } else if let Some(prompt) = field("prompt") {
            self.text(prompt?)
        } else if let Some(text) = field("text") {
            self.text(text?)
        } else {
            Err("expected a `messages`, `prompt` or `text` key".into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::tests::encode_with_mistral;
    use crate::tokenizer::tests::mistral;

    /// A prompt is the training example's ids up to where the answer starts.
    #[test]
    fn prompts_are_the_training_frames_without_the_answer() {
        let tok = mistral();
        let prompts = Prompts::new(&tok, 32000, Some(1), Some(2)).unwrap();
        let example =
            encode_with_mistral(Format::PromptCompletion, r#"{"prompt": "The capital of France is", "completion": "Paris."}"#).unwrap();
        let prompt = prompts.line(br#"{"prompt": "The capital of France is", "completion": "Paris."}"#).unwrap();
        assert_eq!(prompt, example.input_ids[..prompt.len()]);
        assert_eq!(prompt, prompts.text("The capital of France is").unwrap());

        let chat = r#"{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]}"#;
        let example = encode_with_mistral(Format::Chat, chat).unwrap();
        let prompt = prompts.chat("Hi").unwrap();
        assert_eq!(prompt, example.input_ids[..9]);
        let longer = r#"{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Bye"}]}"#;
        assert_eq!(prompts.line(longer.as_bytes()).unwrap()[..example.input_ids.len()], example.input_ids[..]);
        assert!(prompts.line(chat.as_bytes()).unwrap_err().contains("a prompt ends with a user turn"));
        assert!(prompts.line(br#"{"input": "x"}"#).unwrap_err().contains("`messages`, `prompt` or `text`"));
    }
}
