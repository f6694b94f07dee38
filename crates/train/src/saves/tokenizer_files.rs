//! The tokenizer an export carries, so that `AutoTokenizer.from_pretrained(export)` works, and
//! `apply_chat_template` for a chat-trained run: tokenizer.json (the run's `data.tokenizer`, else
//! the model directory's), the model's tokenizer_config.json (or one made from the tokenizer's
//! BOS and EOS), and the chat template the run rendered its conversations with, so that it
//! renders the same ids training saw.

use std::path::Path;

use anyhow::{Context, Result};
use serde_json::{Map, Value};

/// Where an export's side files come from.
#[derive(Debug, Clone, Copy, Default)]
pub struct ExportSources<'a> {
    /// The model directory, when the model came from a checkpoint: its tokenizer files and
    /// generation config (and what a peft adapter names as its base).
    pub model_dir: Option<&'a Path>,
    /// The tokenizer.json the data was tokenized with.
    pub tokenizer: Option<&'a Path>,
    /// The chat template the run's conversations were rendered with (`data.format = "chat"` or
    /// `"messages"`; `shard_data::TemplateSource::of_conversations`); none for other formats.
    pub chat_template: Option<&'a str>,
}

/// Writes tokenizer.json and tokenizer_config.json into `dir` (an export being written), when
/// there is a tokenizer; `model_config` is the model's config.json (its BOS and EOS ids).
pub fn write_tokenizer_files(dir: &Path, source: &ExportSources, model_config: &Value) -> Result<()> {
    let model_file = |name: &str| source.model_dir.map(|d| d.join(name)).filter(|f| f.is_file());
    let Some(tokenizer) = source.tokenizer.map(Path::to_owned).or_else(|| model_file("tokenizer.json")) else { return Ok(()) };
    copy(&tokenizer, &dir.join("tokenizer.json"))?;
    let mut config = match model_file("tokenizer_config.json") {
        Some(path) => read_object(&path)?,
        None => Map::new(),
    };
    // transformers reads chat_template.jinja before tokenizer_config.json's key: the model's file
    // goes along only when the run has no template of its own to write.
    let template_file = model_file("chat_template.jinja").filter(|_| source.chat_template.is_none());
    if let Some(file) = &template_file {
        copy(file, &dir.join("chat_template.jinja"))?;
    }
    let tokens = read_object(&tokenizer)?;
    for (key, id_key) in [("bos_token", "bos_token_id"), ("eos_token", "eos_token_id")] {
        if !config.contains_key(key)
            && let Some(token) = model_config[id_key].as_u64().and_then(|id| token_of(&tokens, id))
        {
            config.insert(key.into(), token.into());
        }
    }
    config.entry("tokenizer_class").or_insert_with(|| "PreTrainedTokenizerFast".into());
    if let Some(template) = source.chat_template {
        config.insert("chat_template".into(), template.into());
    }
    let path = dir.join("tokenizer_config.json");
    std::fs::write(&path, serde_json::to_string_pretty(&config)?).with_context(|| format!("cannot write {}", path.display()))
}

fn copy(from: &Path, to: &Path) -> Result<()> {
    std::fs::copy(from, to).with_context(|| format!("cannot copy {} to {}", from.display(), to.display()))?;
    Ok(())
}

fn read_object(path: &Path) -> Result<Map<String, Value>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    match serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", path.display()))? {
        Value::Object(map) => Ok(map),
        _ => anyhow::bail!("{} is not a JSON object", path.display()),
    }
}

/// The text of special token `id` in a tokenizer.json (its `added_tokens`).
fn token_of(tokenizer: &Map<String, Value>, id: u64) -> Option<String> {
    let added = tokenizer.get("added_tokens")?.as_array()?;
    added.iter().find(|t| t["id"].as_u64() == Some(id)).and_then(|t| t["content"].as_str()).map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture_tokenizer() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tokenizer/mistral-7b-v0.1.tokenizer.json")
    }

    /// A model directory without tokenizer files and a run's own tokenizer: the export gets the
    /// tokenizer, BOS and EOS by the model's ids, and the run's chat template; a model's own
    /// tokenizer_config.json is kept as it is, its template replaced by the run's where the run
    /// rendered conversations with another.
    #[test]
    fn an_export_gets_the_runs_tokenizer_and_chat_template() {
        let tmp = std::env::temp_dir().join(format!("tokenizer-files-{}", std::process::id()));
        let (model, out) = (tmp.join("model"), tmp.join("out"));
        std::fs::create_dir_all(&model).unwrap();
        std::fs::create_dir_all(&out).unwrap();
        let config = serde_json::json!({ "bos_token_id": 1, "eos_token_id": 2 });
        let tokenizer = fixture_tokenizer();
        let source = ExportSources { model_dir: Some(&model), tokenizer: Some(&tokenizer), chat_template: Some("{{ run's }}") };
        write_tokenizer_files(&out, &source, &config).unwrap();
        assert_eq!(std::fs::read(out.join("tokenizer.json")).unwrap(), std::fs::read(&tokenizer).unwrap());
        let written = read_object(&out.join("tokenizer_config.json")).unwrap();
        assert_eq!((written["bos_token"].as_str(), written["eos_token"].as_str()), (Some("<s>"), Some("</s>")));
        assert_eq!(written["chat_template"], "{{ run's }}");

        std::fs::write(model.join("tokenizer_config.json"), r#"{"chat_template": "{{ own }}", "bos_token": "<s>"}"#).unwrap();
        std::fs::write(model.join("chat_template.jinja"), "{{ own file }}").unwrap();
        write_tokenizer_files(&out, &ExportSources { chat_template: None, ..source }, &config).unwrap();
        let written = read_object(&out.join("tokenizer_config.json")).unwrap();
        assert_eq!(written["chat_template"], "{{ own }}");
        assert_eq!(std::fs::read_to_string(out.join("chat_template.jinja")).unwrap(), "{{ own file }}");

        let fresh = tmp.join("fresh");
        std::fs::create_dir_all(&fresh).unwrap();
        write_tokenizer_files(&fresh, &source, &config).unwrap();
        assert_eq!(read_object(&fresh.join("tokenizer_config.json")).unwrap()["chat_template"], "{{ run's }}");
        assert!(!fresh.join("chat_template.jinja").exists(), "the model's file would override the run's template");

        let none = ExportSources { model_dir: Some(&model), tokenizer: None, chat_template: Some("x") };
        let empty = tmp.join("empty");
        std::fs::create_dir_all(&empty).unwrap();
        write_tokenizer_files(&empty, &none, &config).unwrap();
        assert_eq!(std::fs::read_dir(&empty).unwrap().count(), 0, "no tokenizer, no files");
        std::fs::remove_dir_all(&tmp).unwrap();
    }
}
