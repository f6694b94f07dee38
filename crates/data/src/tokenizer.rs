//! A Hugging Face `tokenizer.json`, and the BOS and EOS ids that examples are framed with.

use std::path::{Path, PathBuf};

use crate::{DataError, DataSpec};

/// Where a token's text lies in the text it was encoded from: (start, end) in bytes.
pub(crate) type ByteRange = (usize, usize);

/// A loaded `tokenizer.json`.
pub struct TextTokenizer {
    inner: tokenizers::Tokenizer,
    path: PathBuf,
}

impl TextTokenizer {
    pub fn from_file(path: &Path) -> Result<Self, DataError> {
        let inner = tokenizers::Tokenizer::from_file(path).map_err(|e| {
            let is_json = std::fs::read(path).is_ok_and(|b| serde_json::from_slice::<serde_json::Value>(&b).is_ok());
            let why = match is_json {
                true => format!("valid JSON, but not a Hugging Face tokenizer.json (the file tokenizers and transformers write, with `model`, `pre_tokenizer`, `added_tokens`): {e}"),
                false => e.to_string(),
            };
            DataError::Tokenizer { path: path.to_owned(), why }
        })?;
        Ok(Self { inner, path: path.to_owned() })
    }

    /// Ids of `text` as one piece, without the special tokens the tokenizer adds around a whole
    /// sequence. Like SentencePiece, a piece starts a new word (Mistral: a leading `▁`).
    pub(crate) fn encode(&self, text: &str) -> Result<Vec<u32>, String> {
        let encoding = self.inner.encode_fast(text, false).map_err(|e| format!("cannot tokenize: {e}"))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// Ids of `text` as one piece (as [`Self::encode`]), with each token's byte range in `text`.
    pub(crate) fn encode_with_offsets(&self, text: &str) -> Result<(Vec<u32>, Vec<ByteRange>), String> {
        let encoding = self.inner.encode(text, false).map_err(|e| format!("cannot tokenize: {e}"))?;
        Ok((encoding.get_ids().to_vec(), encoding.get_offsets().to_vec()))
    }

    /// The text of token `id`, as written in the vocabulary (`<s>`, `▁Hello`).
    pub(crate) fn token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// The text of `ids`; special tokens (`<s>`, `</s>`) are written out unless skipped.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String, DataError> {
        self.inner.decode(ids, skip_special_tokens).map_err(|e| self.error(format!("cannot decode: {e}")))
    }

    /// Ids 0..vocab_size, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The token the tokenizer's post-processor puts in front of a sequence, if any.
    fn bos_it_adds(&self) -> Result<Option<u32>, DataError> {
        let probe = |special| self.inner.encode_fast("a", special).map(|e| e.get_ids().to_vec());
        let (with, without) = match (probe(true), probe(false)) {
            (Ok(with), Ok(without)) => (with, without),
            (Err(e), _) | (_, Err(e)) => return Err(self.error(format!("cannot tokenize: {e}"))),
        };
        let start = with.windows(without.len()).position(|w| w == without.as_slice()).unwrap_or(0);
        match with[..start] {
            [] => Ok(None),
            [bos] => Ok(Some(bos)),
            ref several => Err(self.error(format!("adds {several:?} in front of a sequence; only one BOS token is supported"))),
        }
    }

    fn error(&self, why: String) -> DataError {
        DataError::Tokenizer { path: self.path.clone(), why }
    }
}

/// The special tokens around an example: `bos` as the tokenizer adds it to a sequence (its id
/// checked against the model's `bos_token_id`), `eos` the model's `eos_token_id` (else the
/// tokenizer's `</s>`). Examples of the `tokenized` format are taken as they are: no BOS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Specials {
    pub bos: Option<u32>,
    pub eos: Option<u32>,
}

impl Specials {
    pub(crate) fn resolve(spec: &DataSpec, tokenizer: Option<&TextTokenizer>) -> Result<Self, DataError> {
        if let Some(eos) = spec.eos_token_id.filter(|&id| id as usize >= spec.vocab_size) {
            return Err(DataError::Setup(format!("the model's eos_token_id {eos} is outside its vocabulary (0..{})", spec.vocab_size)));
        }
        let Some(tok) = tokenizer.filter(|_| spec.format.needs_tokenizer()) else {
            if spec.packing && spec.eos_token_id.is_none() {
                return Err(DataError::Setup(
                    "data.packing separates examples with EOS, but the model's config.json has no `eos_token_id`".into(),
                ));
            }
            return Ok(Self { bos: None, eos: spec.eos_token_id });
        };
        if tok.vocab_size() > spec.vocab_size {
            return Err(tok.error(format!("has {} tokens, more than the model's vocab_size ({})", tok.vocab_size(), spec.vocab_size)));
        }
        let bos = tok.bos_it_adds()?;
        if let (Some(ours), Some(model)) = (bos, spec.bos_token_id)
            && ours != model
        {
            return Err(tok.error(format!("starts sequences with token {ours}, but the model's config.json has bos_token_id = {model}")));
        }
        let eos = spec.eos_token_id.or_else(|| tok.inner.token_to_id("</s>")).ok_or_else(|| {
            tok.error("has no `</s>` token and the model's config.json no `eos_token_id`: no EOS to end examples with".into())
        })?;
        Ok(Self { bos, eos: Some(eos) })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::{Format, OnBadExample};

    pub(crate) fn fixtures() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
    }

    pub(crate) fn mistral() -> TextTokenizer {
        TextTokenizer::from_file(&fixtures().join("tokenizer/mistral-7b-v0.1.tokenizer.json")).unwrap()
    }

    pub(crate) fn spec(format: Format) -> DataSpec {
        DataSpec {
            source: PathBuf::from("data.jsonl"),
            format,
            fields: Default::default(),
            tokenizer: Some(fixtures().join("tokenizer/mistral-7b-v0.1.tokenizer.json")),
            chat_template: None,
            seq_len: 4096,
            packing: false,
            on_bad_example: OnBadExample::Error,
            vocab_size: 32000,
            bos_token_id: Some(1),
            eos_token_id: Some(2),
        }
    }

    /// Every case made by the Python `tokenizers` library: ids (BOS included) and decoded text.
    #[test]
    fn reproduces_the_mistral_cases() {
        let tok = mistral();
        let specials = Specials::resolve(&spec(Format::Text), Some(&tok)).unwrap();
        assert_eq!(specials, Specials { bos: Some(1), eos: Some(2) });
        let cases = std::fs::read_to_string(fixtures().join("tokenizer/mistral-7b-v0.1.cases.jsonl")).unwrap();
        let mut n = 0;
        for line in cases.lines() {
            let case: serde_json::Value = serde_json::from_str(line).unwrap();
            let text = case["text"].as_str().unwrap();
            let expected: Vec<u32> = serde_json::from_value(case["ids"].clone()).unwrap();
            let mut ids = vec![specials.bos.unwrap()];
            ids.extend(tok.encode(text).unwrap());
            assert_eq!(ids, expected, "ids of {text:?}");
            assert_eq!(tok.decode(&ids, true).unwrap(), case["decoded"].as_str().unwrap(), "decoded {text:?}");
            n += 1;
        }
        assert_eq!(n, 67);
    }

    #[test]
    fn specials_follow_tokenizer_and_model_config() {
        let tok = mistral();
        let mut s = spec(Format::Text);
        s.eos_token_id = None;
        assert_eq!(Specials::resolve(&s, Some(&tok)).unwrap().eos, Some(2), "falls back to </s>");
        s.bos_token_id = Some(5);
        let msg = Specials::resolve(&s, Some(&tok)).unwrap_err().to_string();
        assert!(msg.contains("bos_token_id = 5") && msg.contains("mistral-7b-v0.1.tokenizer.json"), "{msg}");
        s.bos_token_id = Some(1);
        s.vocab_size = 1000;
        let msg = Specials::resolve(&s, Some(&tok)).unwrap_err().to_string();
        assert!(msg.contains("32000 tokens, more than the model's vocab_size (1000)"), "{msg}");

        let mut t = spec(Format::Tokenized);
        assert_eq!(Specials::resolve(&t, Some(&tok)).unwrap(), Specials { bos: None, eos: Some(2) });
        t.eos_token_id = Some(32000);
        assert!(Specials::resolve(&t, None).unwrap_err().to_string().contains("eos_token_id 32000 is outside"));
        t.eos_token_id = None;
        t.packing = true;
        assert!(Specials::resolve(&t, None).unwrap_err().to_string().contains("eos_token_id"));
    }

    #[test]
    fn unreadable_tokenizer_names_the_file() {
        let msg = TextTokenizer::from_file(Path::new("/nonexistent/tokenizer.json")).err().unwrap().to_string();
        assert!(msg.contains("/nonexistent/tokenizer.json"), "{msg}");
    }
}
