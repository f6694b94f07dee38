//! The `text` format, `{"text": "..."}`: BOS, the text, EOS, loss on every token but BOS. And
//! `prompt_completion`, `{"prompt": "...", "completion": "..."}`: BOS, the prompt, the completion,
//! EOS, loss on the completion and EOS. Prompt and completion are tokenized as separate pieces,
//! so the completion starts a new word, as an answer does in the chat format.

use serde::Deserialize;

use super::Framing;
use crate::Example;

#[derive(Deserialize)]
struct TextLine {
    text: String,
}

#[derive(Deserialize)]
struct PromptCompletionLine {
    prompt: String,
    completion: String,
}

pub(super) fn encode_text(line: &[u8], framing: &Framing) -> Result<Example, String> {
    let row: TextLine = super::parse(line)?;
    if row.text.is_empty() {
        return Err("empty example: `text` is \"\"".into());
    }
    let mut pieces = framing.start();
    pieces.text(&row.text, true)?.eos(true);
    Ok(pieces.example)
}

pub(super) fn encode_prompt_completion(line: &[u8], framing: &Framing) -> Result<Example, String> {
    let row: PromptCompletionLine = super::parse(line)?;
    if row.completion.is_empty() {
        return Err("empty example: `completion` is \"\" (nothing to learn)".into());
    }
    let mut pieces = framing.start();
    pieces.text(&row.prompt, false)?.text(&row.completion, true)?.eos(true);
    Ok(pieces.example)
}

#[cfg(test)]
mod tests {
    use crate::format::tests::{encode_with_mistral, split_by_loss};
    use crate::{Example, Format};

    #[test]
    fn text_by_hand() {
        // <s> ▁Hello ▁world </s>
        let e = encode_with_mistral(Format::Text, r#"{"text": "Hello world", "source": "ignored"}"#).unwrap();
        assert_eq!(e, Example { input_ids: vec![1, 22557, 1526, 2], labels: vec![-100, 22557, 1526, 2] });
    }

    #[test]
    fn prompt_completion_by_hand() {
        // <s> ▁The ▁capital ▁of ▁France ▁is | ▁Paris . </s>
        let line = r#"{"prompt": "The capital of France is", "completion": "Paris."}"#;
        let e = encode_with_mistral(Format::PromptCompletion, line).unwrap();
        assert_eq!(e.input_ids, vec![1, 415, 5565, 302, 4843, 349, 5465, 28723, 2]);
        assert_eq!(split_by_loss(&e), (vec![5465, 28723, 2], vec![1, 415, 5565, 302, 4843, 349]));
        assert_eq!(e.labels[6..], [5465, 28723, 2]);
    }

    #[test]
    fn each_bad_input_says_why() {
        let cases = [
            (Format::Text, r#"{"text": ""}"#, "empty example: `text` is \"\""),
            (Format::Text, r#"{"txt": "a"}"#, "missing field `text`"),
            (Format::Text, r#"{"text": 3}"#, "invalid type: integer `3`, expected a string (column 10)"),
            (Format::Text, r#"{"text": "a"#, "EOF while parsing a string"),
            (Format::PromptCompletion, r#"{"prompt": "a"}"#, "missing field `completion`"),
            (Format::PromptCompletion, r#"{"prompt": "a", "completion": ""}"#, "empty example"),
            (Format::PromptCompletion, r#"{"prompt": null, "completion": "b"}"#, "invalid type: null, expected a string"),
        ];
        for (format, line, expected) in cases {
            let msg = encode_with_mistral(format, line).unwrap_err();
            assert!(msg.contains(expected), "{msg:?} should contain {expected:?}");
        }
    }
}
