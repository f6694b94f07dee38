//! The `messages` format: a conversation as OpenAI (`{"messages": [{"role", "content"}]}`) or
//! ShareGPT (`{"conversations": [{"from", "value"}]}`, roles `human`/`gpt`/`system`) write it,
//! rendered with the chat template the model ships (template.rs), or, for a model without one,
//! exactly as the `chat` format (Mistral-Instruct's `[INST]`). Loss on the assistant turns only.

use super::Framing;
use super::chat::{self, ChatLine, Role};
use super::template::{ChatTemplate, TemplateMessage};
use crate::Example;

pub(super) fn encode(line: &[u8], framing: &Framing, template: Option<&ChatTemplate>) -> Result<Example, String> {
    let Some(template) = template else { return chat::encode(line, framing) };
    let row: ChatLine = super::parse(line)?;
    if !row.messages.iter().any(|m| m.role != Role::System) {
        return Err("empty example: no user or assistant turn".into());
    }
    chat::ends_with_an_answer(&row.messages)?;
    if let Some(i) = row.messages.iter().position(|m| m.role == Role::Assistant && m.content.is_empty()) {
        return Err(format!("messages[{i}]: the assistant's content is empty"));
    }
    let messages: Vec<_> = row.messages.iter().map(|m| TemplateMessage { role: m.role.name(), content: &m.content }).collect();
    template.encode(&messages, framing.tokenizer)
}

#[cfg(test)]
mod tests {
    use crate::Format;
    use crate::format::tests::encode_with_mistral;

    /// Without a template, OpenAI's and ShareGPT's spellings are the `chat` format's example.
    #[test]
    fn without_a_template_both_spellings_are_the_chat_format() {
        let openai = r#"{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]}"#;
        let sharegpt = r#"{"conversations": [{"from": "system", "value": "Be brief."}, {"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello!"}]}"#;
        let chat = encode_with_mistral(Format::Chat, openai).unwrap();
        assert_eq!(encode_with_mistral(Format::Messages, openai).unwrap(), chat);
        assert_eq!(encode_with_mistral(Format::Messages, sharegpt).unwrap(), chat);
        let msg = encode_with_mistral(Format::Messages, r#"{"conversations": [{"from": "bot", "value": "x"}]}"#).unwrap_err();
        assert!(msg.contains("unknown variant `bot`"), "{msg}");
    }
}
