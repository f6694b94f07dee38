//! The architecture, read from a Hugging Face `config.json`.
//!
//! Field names are the HF keys. Keys that change the architecture in ways this crate does not
//! implement (biases, tied embeddings, RoPE scaling, another activation) are refused by name, so
//! that a checkpoint never trains as a silently different model.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

/// Errors in a `config.json`: each names the file and the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read model config {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: not valid JSON: {source}")]
    Json { path: PathBuf, source: serde_json::Error },
    #[error("{path}: missing key `{key}`")]
    Missing { path: PathBuf, key: &'static str },
    #[error("{path}: key `{key}` should be {expected}, found {found}")]
    WrongType { path: PathBuf, key: String, expected: &'static str, found: String },
    #[error("{path}: unsupported `{key}` = {found}: {why}")]
    Unsupported { path: PathBuf, key: String, found: String, why: String },
}

/// A Mistral (or Llama-style, no sliding window) decoder-only architecture.
#[derive(Debug, Clone, PartialEq)]
pub struct MistralConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    /// Query i attends to key j iff j <= i and i - j < window; `None` is plain causal attention.
    pub sliding_window: Option<usize>,
    pub max_position_embeddings: usize,
    pub initializer_range: f64,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<u32>,
    /// The dtype the checkpoint was saved in (`torch_dtype`, or `dtype` in transformers 5).
    pub torch_dtype: Option<String>,
}

impl MistralConfig {
    /// Reads and validates `path` (a `config.json`).
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io { path: path.to_owned(), source })?;
        let value: Value = serde_json::from_str(&text).map_err(|source| ConfigError::Json { path: path.to_owned(), source })?;
        Self::from_json(&value, path)
    }

    /// Validates an already parsed `config.json`; `path` is only used in error messages.
    pub fn from_json(value: &Value, path: &Path) -> Result<Self, ConfigError> {
        let keys = Keys {
            path,
            map: value.as_object().ok_or_else(|| ConfigError::WrongType {
                path: path.to_owned(),
                key: "(top level)".into(),
                expected: "a JSON object",
                found: describe(value),
            })?,
        };
        keys.check_supported()?;

        let hidden_size = keys.usize("hidden_size")?;
        let num_attention_heads = keys.usize("num_attention_heads")?;
        let head_dim = match keys.optional_usize("head_dim")? {
            Some(d) => d,
            None => hidden_size / num_attention_heads,
        };
        let num_key_value_heads = keys.optional_usize("num_key_value_heads")?.unwrap_or(num_attention_heads);
        if num_attention_heads % num_key_value_heads != 0 {
            return Err(keys.unsupported(
                "num_key_value_heads",
                &num_key_value_heads.to_string(),
                format!("must divide num_attention_heads = {num_attention_heads}"),
            ));
        }
        let model_type = keys.string("model_type")?;
        let sliding_window = match model_type.as_str() {
            "mistral" => keys.optional_usize("sliding_window")?,
            _ => None,
        };
        Ok(Self {
            vocab_size: keys.usize("vocab_size")?,
            hidden_size,
            intermediate_size: keys.usize("intermediate_size")?,
            num_hidden_layers: keys.usize("num_hidden_layers")?,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            rms_norm_eps: keys.optional_f64("rms_norm_eps")?.unwrap_or(1e-6),
            rope_theta: keys.rope_theta()?,
            sliding_window,
            max_position_embeddings: keys.optional_usize("max_position_embeddings")?.unwrap_or(4096),
            initializer_range: keys.optional_f64("initializer_range")?.unwrap_or(0.02),
            bos_token_id: keys.optional_usize("bos_token_id")?.map(|v| v as u32),
            eos_token_id: keys.optional_usize("eos_token_id")?.map(|v| v as u32),
            torch_dtype: keys.optional_string("torch_dtype")?.or(keys.optional_string("dtype")?),
        })
    }

    /// Query heads per key/value head.
    pub fn kv_groups(&self) -> usize {
        self.num_attention_heads / self.num_key_value_heads
    }
}

/// Typed access to the keys of one config file, with errors that name the file and key.
struct Keys<'a> {
    path: &'a Path,
    map: &'a Map<String, Value>,
}

impl Keys<'_> {
    /// Refuses values that would make this a different architecture than the one implemented.
    fn check_supported(&self) -> Result<(), ConfigError> {
        let model_type = self.string("model_type")?;
        if model_type != "mistral" && model_type != "llama" {
            return Err(self.unsupported("model_type", &model_type, "expected \"mistral\" or \"llama\"".into()));
        }
        for key in ["hidden_act", "hidden_activation"] {
            if let Some(act) = self.optional_string(key)?
                && act != "silu"
            {
                return Err(self.unsupported(key, &act, "only silu (SwiGLU) is implemented".into()));
            }
        }
        for key in ["tie_word_embeddings", "attention_bias", "mlp_bias"] {
            if let Some(Value::Bool(true)) = self.map.get(key) {
                return Err(self.unsupported(key, "true", "not implemented (untied, bias-free projections only)".into()));
            }
        }
        if let Some(scaling) = self.map.get("rope_scaling").filter(|v| !v.is_null()) {
            return Err(self.unsupported("rope_scaling", &scaling.to_string(), "only default RoPE is implemented".into()));
        }
        if let Some(Value::Object(rope)) = self.map.get("rope_parameters")
            && let Some(kind) = rope.get("rope_type").and_then(Value::as_str)
            && kind != "default"
        {
            return Err(self.unsupported("rope_parameters.rope_type", kind, "only default RoPE is implemented".into()));
        }
        Ok(())
    }

    /// `rope_theta` at the top level (transformers 4) or under `rope_parameters` (transformers 5).
    fn rope_theta(&self) -> Result<f64, ConfigError> {
        if let Some(theta) = self.optional_f64("rope_theta")? {
            return Ok(theta);
        }
        match self.map.get("rope_parameters") {
            Some(Value::Object(rope)) => match rope.get("rope_theta") {
                Some(v) => v.as_f64().ok_or_else(|| self.wrong_type("rope_parameters.rope_theta", "a number", v)),
                None => Err(ConfigError::Missing { path: self.path.to_owned(), key: "rope_parameters.rope_theta" }),
            },
            Some(v) if !v.is_null() => Err(self.wrong_type("rope_parameters", "an object", v)),
            _ => Ok(10000.0),
        }
    }

    fn usize(&self, key: &'static str) -> Result<usize, ConfigError> {
        self.optional_usize(key)?.ok_or(ConfigError::Missing { path: self.path.to_owned(), key })
    }

    fn optional_usize(&self, key: &str) -> Result<Option<usize>, ConfigError> {
        match self.map.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => match v.as_u64() {
                Some(n) if n > 0 || key.ends_with("token_id") => Ok(Some(n as usize)),
                _ => Err(self.wrong_type(key, "a positive integer", v)),
            },
        }
    }

    fn optional_f64(&self, key: &str) -> Result<Option<f64>, ConfigError> {
        match self.map.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v.as_f64().map(Some).ok_or_else(|| self.wrong_type(key, "a number", v)),
        }
    }

    fn string(&self, key: &'static str) -> Result<String, ConfigError> {
        self.optional_string(key)?.ok_or(ConfigError::Missing { path: self.path.to_owned(), key })
    }

    fn optional_string(&self, key: &str) -> Result<Option<String>, ConfigError> {
        match self.map.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(v) => Err(self.wrong_type(key, "a string", v)),
        }
    }

    fn wrong_type(&self, key: &str, expected: &'static str, found: &Value) -> ConfigError {
        ConfigError::WrongType { path: self.path.to_owned(), key: key.into(), expected, found: describe(found) }
    }

    fn unsupported(&self, key: &str, found: &str, why: String) -> ConfigError {
        ConfigError::Unsupported { path: self.path.to_owned(), key: key.into(), found: found.into(), why }
    }
}

fn describe(v: &Value) -> String {
    let kind = match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    };
    format!("{kind} ({v})")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn tiny() -> Value {
        json!({
            "model_type": "mistral", "vocab_size": 1000, "hidden_size": 64, "intermediate_size": 160,
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
            "rms_norm_eps": 1e-5, "rope_parameters": {"rope_theta": 10000.0, "rope_type": "default"},
            "sliding_window": null, "tie_word_embeddings": false, "hidden_act": "silu"
        })
    }

    fn parse(v: Value) -> Result<MistralConfig, ConfigError> {
        MistralConfig::from_json(&v, Path::new("config.json"))
    }

    #[test]
    fn defaults_head_dim_and_reads_nested_rope_theta() {
        let cfg = parse(tiny()).unwrap();
        assert_eq!(cfg.head_dim, 16);
        assert_eq!(cfg.rope_theta, 10000.0);
        assert_eq!(cfg.sliding_window, None);
        assert_eq!(cfg.kv_groups(), 2);
    }

    #[test]
    fn top_level_rope_theta_wins() {
        let mut v = tiny();
        v["rope_theta"] = json!(500000.0);
        assert_eq!(parse(v).unwrap().rope_theta, 500000.0);
    }

    #[test]
    fn llama_has_no_sliding_window() {
        let mut v = tiny();
        v["model_type"] = json!("llama");
        v["sliding_window"] = json!(16);
        assert_eq!(parse(v).unwrap().sliding_window, None);
    }

    #[test]
    fn errors_name_the_key() {
        let mut v = tiny();
        v.as_object_mut().unwrap().remove("hidden_size");
        assert!(parse(v).unwrap_err().to_string().contains("missing key `hidden_size`"));

        let mut v = tiny();
        v["vocab_size"] = json!("big");
        let msg = parse(v).unwrap_err().to_string();
        assert!(msg.contains("`vocab_size`") && msg.contains("a string"), "{msg}");

        let mut v = tiny();
        v["tie_word_embeddings"] = json!(true);
        assert!(parse(v).unwrap_err().to_string().contains("`tie_word_embeddings`"));

        let mut v = tiny();
        v["model_type"] = json!("gpt2");
        assert!(parse(v).unwrap_err().to_string().contains("`model_type`"));
    }
}
