//! A Hugging Face chat template (jinja) rendered as transformers' `apply_chat_template` renders
//! it: `trim_blocks` and `lstrip_blocks` on, `{% break %}`/`{% continue %}`, Python's string
//! and dict methods (`.strip()`, `.items()`), `raise_exception(message)`, `strftime_now(format)`,
//! and `messages`, `add_generation_prompt`, `bos_token`, `eos_token`, `tools` and `documents` (none)
//! in the context.
//!
//! A conversation becomes an example by rendering it once and tokenizing the text whole (as
//! `apply_chat_template(tokenize=True)` does); an assistant turn's loss covers the text that the
//! turn adds to the rendering of the conversation before it with the generation prompt, i.e.
//! from the end of `render(messages[..i], add_generation_prompt=True)` to the end of
//! `render(messages[..=i])`: the answer and what the template closes it with (EOS, a newline).
//! A token carries loss when it starts inside such a span.

use std::ops::Range;
use std::path::Path;

use minijinja::{Environment, Error, ErrorKind, Value, context};
use serde::Serialize;

use crate::{DataError, DataSpec, Example, Format, IGNORE_INDEX, TextTokenizer};

/// The `chat` format as a jinja template (tokenized without added special tokens, as
/// `apply_chat_template` does): BOS, each user turn as `[INST] ... [/INST]` (the system message in
/// front of the first, `system\n\nuser`), each answer as a word of its own closed by EOS. What
/// `messages` renders with when the tokenizer ships no template.
pub const MISTRAL_CHAT_TEMPLATE: &str = "{{ bos_token }}{% for message in messages %}\
{% if message['role'] == 'user' %}\
{% if loop.index0 == 1 and messages[0]['role'] == 'system' %}{{ '[INST] ' + messages[0]['content'] + '\\n\\n' + message['content'] + ' [/INST]' }}\
{% else %}{{ '[INST] ' + message['content'] + ' [/INST]' }}{% endif %}\
{% elif message['role'] == 'assistant' %}{{ ' ' + message['content'] + eos_token }}{% endif %}{% endfor %}";

/// Where a chat template was found, and its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateSource {
    /// The file, and for a tokenizer_config.json the key (`chat_template`) it came from.
    pub origin: String,
    pub text: String,
}

impl TemplateSource {
    /// `explicit` (a jinja file), else the template shipped beside `tokenizer` (a
    /// `chat_template.jinja`, else `tokenizer_config.json`'s `chat_template`), else none.
    pub fn find(explicit: Option<&Path>, tokenizer: Option<&Path>) -> Result<Option<Self>, DataError> {
        if let Some(path) = explicit {
            let text = std::fs::read_to_string(path).map_err(DataError::io(path))?;
            return Ok(Some(Self { origin: path.display().to_string(), text }));
        }
        let Some(dir) = tokenizer.and_then(Path::parent) else { return Ok(None) };
        let jinja = dir.join("chat_template.jinja");
        if jinja.is_file() {
            return Self::find(Some(&jinja), None);
        }
        let config = dir.join("tokenizer_config.json");
        if !config.is_file() {
            return Ok(None);
        }
        let bytes = std::fs::read(&config).map_err(DataError::io(&config))?;
        let json: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| setup(&config, format!("is not valid JSON: {e}")))?;
        let text = match &json["chat_template"] {
            serde_json::Value::Null => return Ok(None),
            serde_json::Value::String(text) => text.clone(),
            // Several named templates: the one a plain `apply_chat_template` uses.
            serde_json::Value::Array(named) => match named.iter().find(|t| t["name"] == "default") {
                Some(t) => t["template"]
                    .as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| setup(&config, "chat_template's \"default\" has no `template` string".into()))?,
                None => return Err(setup(&config, "chat_template lists named templates but none is named \"default\"".into())),
            },
            other => return Err(setup(&config, format!("chat_template is {other}, expected a string"))),
        };
        Ok(Some(Self { origin: format!("{} (chat_template)", config.display()), text }))
    }

    /// The template conversations of `spec` are rendered with, which an export carries: the
    /// `chat` format's [`MISTRAL_CHAT_TEMPLATE`]; for `messages`, the one it found, else that one;
    /// none for formats that are not conversations.
    pub fn of_conversations(spec: &DataSpec) -> Result<Option<Self>, DataError> {
        Ok(match spec.format {
            Format::Chat => Some(Self::mistral()),
            Format::Messages => Some(Self::find(spec.chat_template.as_deref(), spec.tokenizer.as_deref())?.unwrap_or_else(Self::mistral)),
            _ => None,
        })
    }

    fn mistral() -> Self {
        Self { origin: "the chat format's [INST] template".into(), text: MISTRAL_CHAT_TEMPLATE.into() }
    }
}

fn setup(path: &Path, why: String) -> DataError {
    DataError::Setup(format!("{}: {why}", path.display()))
}

/// A compiled chat template and the special tokens it is rendered with.
pub(crate) struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
}

/// A message as templates read it: `{"role": ..., "content": ...}`.
#[derive(Serialize)]
pub(crate) struct TemplateMessage<'a> {
    pub role: &'a str,
    pub content: &'a str,
}

const NAME: &str = "chat_template";

impl ChatTemplate {
    pub(crate) fn new(source: &TemplateSource, bos_token: String, eos_token: String) -> Result<Self, DataError> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |message: String| -> Result<Value, Error> {
            Err(Error::new(ErrorKind::InvalidOperation, format!("raise_exception: {message}")))
        });
        env.add_function("strftime_now", strftime_now);
        env.add_template_owned(NAME, source.text.clone())
            .map_err(|e| DataError::Setup(format!("chat template {}: {e:#}", source.origin)))?;
        Ok(Self { env, bos_token, eos_token })
    }

    /// The text of `messages`, followed by the start of an assistant turn if `add_generation_prompt`.
    pub(crate) fn render(&self, messages: &[TemplateMessage], add_generation_prompt: bool) -> Result<String, String> {
        let template = self.env.get_template(NAME).expect("added in new");
        let ctx = context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => &self.bos_token,
            eos_token => &self.eos_token,
            tools => (),
            documents => (),
        };
        template.render(ctx).map_err(|e| format!("chat template: {e:#}"))
    }

    /// The example of a conversation: its rendering tokenized whole, loss on the assistant turns.
    pub(crate) fn encode(&self, messages: &[TemplateMessage], tokenizer: &TextTokenizer) -> Result<Example, String> {
        let text = self.render(messages, false)?;
        let spans = self.assistant_spans(messages, &text)?;
        let (input_ids, offsets) = tokenizer.encode_with_offsets(&text)?;
        let labels = input_ids
            .iter()
            .zip(offsets)
            .map(|(&id, (start, _))| if spans.iter().any(|s| s.contains(&start)) { id as i64 } else { IGNORE_INDEX })
            .collect();
        Ok(Example { input_ids, labels })
    }

    /// The ids of `messages` (ending with a user turn) and the generation prompt: what a model
    /// trained on such conversations continues with its answer.
    pub(crate) fn prompt(&self, messages: &[TemplateMessage], tokenizer: &TextTokenizer) -> Result<Vec<u32>, String> {
        tokenizer.encode(&self.render(messages, true)?)
    }

    /// The byte ranges of `text` (the whole conversation rendered) that each assistant turn adds.
    fn assistant_spans(&self, messages: &[TemplateMessage], text: &str) -> Result<Vec<Range<usize>>, String> {
        let mut spans = Vec::new();
        for i in (0..messages.len()).filter(|&i| messages[i].role == "assistant") {
            let before = self.render(&messages[..i], true)?;
            let through = self.render(&messages[..=i], false)?;
            if !text.starts_with(&before) || !through.starts_with(&before) || !text.starts_with(&through) {
                return Err(format!(
                    "messages[{i}]: the chat template does not render this conversation turn by turn (the rendering up to \
                     the answer, with the generation prompt, is not the start of the whole), so the answer's tokens cannot be told apart"
                ));
            }
            spans.push(before.len()..through.len());
        }
        Ok(spans)
    }
}

/// Today's local date and time in a C `strftime` format, as transformers' `strftime_now`.
fn strftime_now(format: String) -> Result<String, Error> {
    let invalid = |why: &str| Error::new(ErrorKind::InvalidOperation, format!("strftime_now({format:?}): {why}"));
    let c_format = std::ffi::CString::new(format.as_str()).map_err(|_| invalid("a NUL in the format"))?;
    let mut buffer = [0u8; 512];
    // SAFETY: `tm` is filled by localtime_r before strftime reads it; strftime writes at most
    // `buffer.len()` bytes and returns how many (0 if they would not fit).
    let written = unsafe {
        let now = libc::time(std::ptr::null_mut());
        let mut tm: libc::tm = std::mem::zeroed();
        if libc::localtime_r(&now, &mut tm).is_null() {
            return Err(invalid("no local time"));
        }
        libc::strftime(buffer.as_mut_ptr().cast(), buffer.len(), c_format.as_ptr(), &tm)
    };
    if written == 0 && !format.is_empty() {
        return Err(invalid("the date does not fit in 512 bytes"));
    }
    Ok(String::from_utf8_lossy(&buffer[..written]).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokenizer::tests::mistral;

    fn template(text: &str) -> ChatTemplate {
        let source = TemplateSource { origin: "test".into(), text: text.into() };
        ChatTemplate::new(&source, "<s>".into(), "</s>".into()).unwrap()
    }

    fn msgs<'a>(pairs: &[(&'a str, &'a str)]) -> Vec<TemplateMessage<'a>> {
        pairs.iter().map(|&(role, content)| TemplateMessage { role, content }).collect()
    }

    /// trim_blocks and lstrip_blocks as transformers sets them, Python methods, loop controls.
    #[test]
    fn renders_as_transformers_does() {
        let t = template(
            "{% for m in messages %}\n  {% if m.role == 'system' %}{% continue %}{% endif %}\n<|{{ m.role }}|>{{ m.content.strip() }}\n{% endfor %}\n{% if add_generation_prompt %}<|assistant|>{% endif %}",
        );
        let m = msgs(&[("system", "s"), ("user", "  hi "), ("assistant", "yo")]);
        assert_eq!(t.render(&m, false).unwrap(), "<|user|>hi\n<|assistant|>yo\n");
        assert_eq!(t.render(&m[..2], true).unwrap(), "<|user|>hi\n<|assistant|>");
        assert!(template("{{ strftime_now('%Y') }}").render(&[], false).unwrap().starts_with("20"));
    }

    #[test]
    fn raise_exception_is_an_error_with_its_message() {
        let t = template("{% if messages|length == 0 %}{{ raise_exception('no turns') }}{% endif %}");
        let msg = t.render(&[], false).unwrap_err();
        assert!(msg.contains("raise_exception: no turns"), "{msg}");
    }

    /// Loss on each answer and the EOS after it; not on the prompt or the generation prompt.
    #[test]
    fn loss_on_what_each_answer_adds() {
        let t = template(
            "{{ bos_token }}{% for m in messages %}{% if m.role == 'user' %}[INST] {{ m.content }} [/INST]{% else %} {{ m.content }}{{ eos_token }}{% endif %}{% endfor %}",
        );
        let tok = mistral();
        let e = t.encode(&msgs(&[("user", "Hi"), ("assistant", "Hello!")]), &tok).unwrap();
        // <s> ▁[ INST ] ▁Hi ▁[ / INST ] | ▁Hello ! </s>
        assert_eq!(e.input_ids, vec![1, 733, 16289, 28793, 15359, 733, 28748, 16289, 28793, 22557, 28808, 2]);
        assert_eq!(e.labels[..9], [IGNORE_INDEX; 9]);
        assert_eq!(e.labels[9..], [22557, 28808, 2]);
    }

    /// The built-in template renders a conversation as the `chat` format frames it, tokens and loss.
    #[test]
    fn the_mistral_template_is_the_chat_format() {
        let t = template(MISTRAL_CHAT_TEMPLATE);
        for line in [
            r#"{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]}"#,
            r#"{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4"}, {"role": "user", "content": "And 3+3?"}, {"role": "assistant", "content": "6"}]}"#,
        ] {
            let row: serde_json::Value = serde_json::from_str(line).unwrap();
            let messages: Vec<_> = row["messages"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| TemplateMessage { role: m["role"].as_str().unwrap(), content: m["content"].as_str().unwrap() })
                .collect();
            assert_eq!(
                t.encode(&messages, &mistral()).unwrap(),
                crate::format::tests::encode_with_mistral(Format::Chat, line).unwrap(),
                "{line}"
            );
        }
    }

    #[test]
    fn a_template_that_rewrites_earlier_turns_is_refused() {
        let t = template("{% for m in messages %}{{ m.content }}{% if loop.last %}.{% endif %}{% endfor %}");
        let msg = t.encode(&msgs(&[("user", "a"), ("assistant", "b")]), &mistral()).unwrap_err();
        assert!(msg.contains("messages[1]: the chat template does not render this conversation turn by turn"), "{msg}");
    }

    #[test]
    fn found_beside_the_tokenizer() {
        let dir = tempfile::tempdir().unwrap();
        let tokenizer = dir.path().join("tokenizer.json");
        assert_eq!(TemplateSource::find(None, Some(&tokenizer)).unwrap(), None);
        std::fs::write(dir.path().join("tokenizer_config.json"), r#"{"chat_template": [{"name": "default", "template": "A"}]}"#).unwrap();
        assert_eq!(TemplateSource::find(None, Some(&tokenizer)).unwrap().unwrap().text, "A");
        std::fs::write(dir.path().join("tokenizer_config.json"), r#"{"chat_template": 3}"#).unwrap();
        let msg = TemplateSource::find(None, Some(&tokenizer)).unwrap_err().to_string();
        assert!(msg.contains("tokenizer_config.json: chat_template is 3, expected a string"), "{msg}");
        std::fs::write(dir.path().join("chat_template.jinja"), "B").unwrap();
        assert_eq!(TemplateSource::find(None, Some(&tokenizer)).unwrap().unwrap().text, "B");
        let explicit = dir.path().join("mine.jinja");
        std::fs::write(&explicit, "C").unwrap();
        assert_eq!(TemplateSource::find(Some(&explicit), Some(&tokenizer)).unwrap().unwrap().text, "C");
    }
}
