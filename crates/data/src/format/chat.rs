//! The `chat` format, `{"messages": [{"role": ..., "content": ...}]}`, in the Mistral-7B-Instruct
//! format as Mistral's own tokenizer (mistral-common, tokenizer v1) encodes it:
//! `<s>[INST] user [/INST] answer</s>[INST] user [/INST] answer</s>`, each user turn and each answer
//! tokenized as its own piece, an optional system message put in front of the first user turn
//! (`system\n\nuser`). Loss on the answers and their `</s>` only. ShareGPT's spelling is read too:
//! `conversations` for `messages`, `from`/`value` for `role`/`content`, `human`/`gpt` for
//! `user`/`assistant`.

use serde::Deserialize;

use super::{Framing, Pieces};
use crate::Example;

#[derive(Deserialize)]
pub(super) struct ChatLine {
    #[serde(alias = "conversations")]
    pub messages: Vec<Message>,
}

#[derive(Deserialize)]
pub(super) struct Message {
    #[serde(alias = "from")]
    pub role: Role,
    #[serde(alias = "value")]
    pub content: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum Role {
    System,
    #[serde(alias = "human")]
    User,
    #[serde(alias = "gpt")]
    Assistant,
}

impl Role {
    /// The name chat templates compare roles with.
    pub(super) fn name(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }
}

pub(super) fn encode(line: &[u8], framing: &Framing) -> Result<Example, String> {
    let row: ChatLine = super::parse(line)?;
    let pieces = render(&row.messages, framing)?;
    ends_with_an_answer(&row.messages)?;
    Ok(pieces.example)
}

/// A conversation to train on ends with the assistant: a last user turn would teach nothing.
pub(super) fn ends_with_an_answer(messages: &[Message]) -> Result<(), String> {
    match messages.last() {
        Some(m) if m.role != Role::Assistant => {
            Err(format!("messages[{}] is a user turn with no answer: a conversation ends with the assistant", messages.len() - 1))
        }
        _ => Ok(()),
    }
}

/// The ids of a conversation that ends with a user turn: the prompt of the answer to come.
pub(super) fn encode_prompt(line: &[u8], framing: &Framing) -> Result<Vec<u32>, String> {
    let row: ChatLine = super::parse(line)?;
    let pieces = render(&row.messages, framing)?;
    if row.messages.last().is_some_and(|m| m.role != Role::User) {
        return Err(format!("messages[{}] is the assistant's: a prompt ends with a user turn", row.messages.len() - 1));
    }
    Ok(pieces.example.input_ids)
}

/// BOS and the turns, each checked: an optional system message, then user and assistant in turn.
fn render<'a>(messages: &[Message], framing: &'a Framing) -> Result<Pieces<'a>, String> {
    let (system, first) = match messages.first() {
        None => return Err("empty example: `messages` is []".into()),
        Some(m) if m.role == Role::System => (Some(m.content.as_str()), 1),
        Some(_) => (None, 0),
    };
    if messages.len() == first {
        return Err("empty example: a system message and no turns".into());
    }
    let mut pieces = framing.start();
    for (i, message) in messages.iter().enumerate().skip(first) {
        let expected = if (i - first) % 2 == 0 { Role::User } else { Role::Assistant };
        if message.role != expected {
            return Err(format!(
                "messages[{i}] has role {:?}, expected {:?} (an optional system message first, then user and assistant turns in turn)",
                message.role, expected
            ));
        }
        match (message.role, system) {
            (Role::User, Some(system)) if i == first => pieces.text(&format!("[INST] {system}\n\n{} [/INST]", message.content), false)?,
            (Role::User, _) => pieces.text(&format!("[INST] {} [/INST]", message.content), false)?,
            _ if message.content.is_empty() => return Err(format!("messages[{i}]: the assistant's content is empty")),
            _ => pieces.text(&message.content, true)?.eos(true),
        };
    }
    Ok(pieces)
}

#[cfg(test)]
mod tests {
    use crate::Format;
    use crate::format::tests::{encode_with_mistral, split_by_loss};

    #[test]
    fn one_turn_by_hand() {
        // <s> ▁[ INST ] ▁Hi ▁[ / INST ] | ▁Hello ! </s>
        let line = r#"{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]}"#;
        let e = encode_with_mistral(Format::Chat, line).unwrap();
        assert_eq!(e.input_ids, vec![1, 733, 16289, 28793, 15359, 733, 28748, 16289, 28793, 22557, 28808, 2]);
        assert_eq!(split_by_loss(&e).0, vec![22557, 28808, 2]);
        assert_eq!(e.labels[..9], [-100; 9]);
    }

    #[test]
    fn system_and_two_turns_match_mistral_common() {
        // mistral-common 1.13.1, tokenizer.model.v1, encode_chat_completion (finetuning mode):
        // <s>▁[INST]▁Be▁brief.<0x0A><0x0A>What▁is▁2+2?▁[/INST]▁4</s>▁[INST]▁And▁3+3?▁[/INST]▁6</s>
        let line = r#"{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2+2?"},
            {"role": "assistant", "content": "4"}, {"role": "user", "content": "And 3+3?"}, {"role": "assistant", "content": "6"}]}"#;
        let e = encode_with_mistral(Format::Chat, &line.replace('\n', "")).unwrap();
        let expected = [
            1, 733, 16289, 28793, 1739, 6817, 28723, 13, 13, 3195, 349, 28705, 28750, 28806, 28750, 28804, 733, 28748, 16289, 28793, 28705,
            28781, 2, 733, 16289, 28793, 1015, 28705, 28770, 28806, 28770, 28804, 733, 28748, 16289, 28793, 28705, 28784, 2,
        ];
        assert_eq!(e.input_ids, expected);
        // Loss on "▁4 </s>" and "▁6 </s>" only.
        assert_eq!(split_by_loss(&e).0, vec![28705, 28781, 2, 28705, 28784, 2]);
        assert_eq!(e.labels[20..23], [28705, 28781, 2]);
    }

    #[test]
    fn each_bad_input_says_why() {
        let user = r#"{"role": "user", "content": "a"}"#;
        let answer = r#"{"role": "assistant", "content": "b"}"#;
        let cases = [
            (r#"{"messages": []}"#.to_owned(), "empty example: `messages` is []"),
            (r#"{"messages": [{"role": "system", "content": "s"}]}"#.into(), "empty example"),
            (format!(r#"{{"messages": [{answer}]}}"#), "messages[0] has role Assistant, expected User"),
            (format!(r#"{{"messages": [{user}, {user}]}}"#), "messages[1] has role User, expected Assistant"),
            (format!(r#"{{"messages": [{user}, {answer}, {user}]}}"#), "messages[2] is a user turn with no answer"),
            (
                format!(r#"{{"messages": [{user}, {{"role": "assistant", "content": ""}}]}}"#),
                "messages[1]: the assistant's content is empty",
            ),
            (format!(r#"{{"messages": [{user}, {{"role": "tool", "content": "x"}}]}}"#), "unknown variant `tool`"),
            (r#"{"messages": [{"role": "user"}]}"#.into(), "missing field `content`"),
            (r#"{"messages": "hi"}"#.into(), "invalid type: string \"hi\", expected a sequence"),
            (r#"{"conversation": []}"#.into(), "missing field `messages`"),
        ];
        for (line, expected) in cases {
            let msg = encode_with_mistral(Format::Chat, &line).unwrap_err();
            assert!(msg.contains(expected), "{msg:?} should contain {expected:?}");
        }
    }
}
