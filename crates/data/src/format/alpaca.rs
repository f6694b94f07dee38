//! The `alpaca` format, `{"instruction": ..., "input": ..., "output": ...}`, in the prompt of
//! Stanford Alpaca's `train.py` (`PROMPT_DICT`, tatsu-lab/stanford_alpaca), which axolotl's and
//! most tutorials' `alpaca` prompt follow: the `prompt_input` text when `input` is a non-empty
//! string, `prompt_no_input` when it is empty or missing. Encoded as `prompt_completion` encodes a
//! prompt and its completion: BOS, the prompt, the output as a piece of its own, EOS; loss on the
//! output and EOS.

use serde::Deserialize;

use super::Framing;
use crate::Example;

const WITH_INPUT: &str = "Below is an instruction that describes a task, paired with an input that provides further context. \
Write a response that appropriately completes the request.";

const WITHOUT_INPUT: &str = "Below is an instruction that describes a task. Write a response that appropriately completes the request.";

#[derive(Deserialize)]
struct AlpacaLine {
    instruction: String,
    #[serde(default)]
    input: Option<String>,
    output: String,
}

/// The Alpaca prompt of an instruction and its optional input.
pub(super) fn prompt(instruction: &str, input: Option<&str>) -> String {
    match input.filter(|i| !i.is_empty()) {
        Some(input) => format!("{WITH_INPUT}\n\n### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:"),
        None => format!("{WITHOUT_INPUT}\n\n### Instruction:\n{instruction}\n\n### Response:"),
    }
}

pub(super) fn encode(line: &[u8], framing: &Framing) -> Result<Example, String> {
    let row: AlpacaLine = super::parse(line)?;
    if row.output.is_empty() {
        return Err("empty example: `output` is \"\" (nothing to learn)".into());
    }
    let mut pieces = framing.start();
    pieces.text(&prompt(&row.instruction, row.input.as_deref()), false)?.text(&row.output, true)?.eos(true);
    Ok(pieces.example)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Format;
    use crate::format::tests::{encode_with_mistral, split_by_loss};

    #[test]
    fn the_stanford_prompts() {
        assert_eq!(
            prompt("Add.", Some("2 and 3")),
            "Below is an instruction that describes a task, paired with an input that provides further context. \
Write a response that appropriately completes the request.\n\n### Instruction:\nAdd.\n\n### Input:\n2 and 3\n\n### Response:"
        );
        let no_input = "Below is an instruction that describes a task. Write a response that appropriately completes the request.\
\n\n### Instruction:\nAdd.\n\n### Response:";
        assert_eq!(prompt("Add.", Some("")), no_input);
        assert_eq!(prompt("Add.", None), no_input);
        // An instruction that itself holds `{input}` is left as written.
        assert!(prompt("Say {input}.", Some("x")).contains("### Instruction:\nSay {input}.\n"));
    }

    /// The same ids as `prompt_completion` with the Alpaca prompt: loss on the output only.
    #[test]
    fn is_prompt_completion_with_the_alpaca_prompt() {
        let e = encode_with_mistral(Format::Alpaca, r#"{"instruction": "Add.", "input": "2 and 3", "output": "5"}"#).unwrap();
        let line = serde_json::json!({"prompt": prompt("Add.", Some("2 and 3")), "completion": "5"}).to_string();
        assert_eq!(e, encode_with_mistral(Format::PromptCompletion, &line).unwrap());
        let (with_loss, _) = split_by_loss(&e);
        assert_eq!(with_loss, e.input_ids[e.input_ids.len() - with_loss.len()..]);
        assert_eq!(*with_loss.last().unwrap(), 2);
    }

    #[test]
    fn each_bad_input_says_why() {
        let cases = [
            (r#"{"instruction": "a", "output": ""}"#, "empty example: `output` is \"\""),
            (r#"{"instruction": "a"}"#, "missing field `output`"),
            (r#"{"input": "a", "output": "b"}"#, "missing field `instruction`"),
            (r#"{"instruction": "a", "input": 3, "output": "b"}"#, "invalid type: integer `3`"),
        ];
        for (line, expected) in cases {
            let msg = encode_with_mistral(Format::Alpaca, line).unwrap_err();
            assert!(msg.contains(expected), "{msg:?} should contain {expected:?}");
        }
    }
}
