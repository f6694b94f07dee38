//! Prompts to generate from, framed as training frames the same text: BOS and the text (no EOS),
//! or a conversation up to its last user turn, rendered with the chat template (and its
//! generation prompt) or, without one, in the chat format (`[INST] ... [/INST]`), so that a
//! fine-tuned model sees what it was trained to continue.

use std::path::PathBuf;

use serde_json::Value;

use super::chat::{self, ChatLine, Role};
use super::template::{ChatTemplate, TemplateMessage};
use super::{Framing, TemplateSource};
use crate::{DataError, DataSpec, Format, OnBadExample, Specials, TextTokenizer};

pub struct Prompts<'a> {
    framing: Framing<'a>,
    /// What conversations are rendered with; none: the chat format's framing.
    template: Option<ChatTemplate>,
}

impl<'a> Prompts<'a> {
    /// `tokenizer` checked against the model's vocabulary and BOS as a training run checks it;
    /// conversations rendered with `template` where given.
    pub fn new(
        tokenizer: &'a TextTokenizer,
        vocab_size: usize,
        bos_token_id: Option<u32>,
        eos_token_id: Option<u32>,
        template: Option<&TemplateSource>,
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
        let framing = Framing { tokenizer, bos: specials.bos, eos };
        let template = template.map(|source| framing.template(source)).transpose()?;
        Ok(Self { framing, template })
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
        self.conversation(line.to_string().as_bytes())
    }

    /// A JSONL line in a training format, as a prompt: a conversation (`{"messages": [...]}` or
    /// ShareGPT's `{"conversations": [...]}`) up to its last user turn, the `prompt` of
    /// `{"prompt": ...}` (a `completion` is left out), or `{"text": ...}`.
    pub fn line(&self, line: &[u8]) -> Result<Vec<u32>, String> {
        let row: Value = super::parse(line)?;
        let field = |key: &str| row.get(key).map(|v| v.as_str().ok_or_else(|| format!("`{key}` is {v}, expected a string")));
        if row.get("messages").is_some() || row.get("conversations").is_some() {
            self.conversation(line)
        } else if let Some(prompt) = field("prompt") {
            self.text(prompt?)
        } else if let Some(text) = field("text") {
            self.text(text?)
        } else {
            Err("expected a `messages`, `conversations`, `prompt` or `text` key".into())
        }
    }

    fn conversation(&self, line: &[u8]) -> Result<Vec<u32>, String> {
        let Some(template) = &self.template else { return chat::encode_prompt(line, &self.framing) };
        let row: ChatLine = super::parse(line)?;
        if let Some(last) = row.messages.last().filter(|m| m.role != Role::User) {
            return Err(format!("messages[{}] is the {}'s: a prompt ends with a user turn", row.messages.len() - 1, last.role.name()));
        }
        let messages: Vec<_> = row.messages.iter().map(|m| TemplateMessage { role: m.role.name(), content: &m.content }).collect();
        template.prompt(&messages, self.framing.tokenizer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::tests::encode_with_mistral;
    use crate::tokenizer::tests::{fixtures, mistral};

    /// A prompt is the training example's ids up to where the answer starts.
    #[test]
    fn prompts_are_the_training_frames_without_the_answer() {
        let tok = mistral();
        let prompts = Prompts::new(&tok, 32000, Some(1), Some(2), None).unwrap();
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
        assert!(prompts.line(br#"{"input": "x"}"#).unwrap_err().contains("`messages`, `conversations`, `prompt` or `text`"));
    }

    /// With a chat template, a conversation's prompt (OpenAI's or ShareGPT's spelling) is its
    /// training example's ids up to the first answer: the template's generation prompt included.
    #[test]
    fn prompts_render_with_the_chat_template() {
        let tok = mistral();
        let source = TemplateSource::find(Some(&fixtures().join("data/chat_template.jinja")), None).unwrap().unwrap();
        let prompts = Prompts::new(&tok, 32000, Some(1), Some(2), Some(&source)).unwrap();
        let rows = std::fs::read_to_string(fixtures().join("data/expected/messages-template.rows.jsonl")).unwrap();
        let first: Value = serde_json::from_str(rows.lines().next().unwrap()).unwrap();
        let answer_starts = first["labels"].as_array().unwrap().iter().position(|l| l != -100).unwrap();
        let ids: Vec<u32> = first["input_ids"].as_array().unwrap()[..answer_starts].iter().map(|i| i.as_u64().unwrap() as u32).collect();
        assert_eq!(prompts.chat("Hi").unwrap(), ids);
        assert_eq!(prompts.line(br#"{"conversations": [{"from": "human", "value": "Hi"}]}"#).unwrap(), ids);
        let msg = prompts.line(br#"{"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Yo"}]}"#).unwrap_err();
        assert!(msg.contains("messages[1] is the assistant's: a prompt ends with a user turn"), "{msg}");
    }
}
