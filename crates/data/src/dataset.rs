//! A built cache as rows to train on: one row per example, or with packing the token stream cut
//! into rows of `seq_len` (the last may be shorter). Rows are read from the memory map on demand,
//! so no process holds the dataset in memory.

use std::path::Path;

use memmap2::Mmap;

use crate::cache::{self, CacheStats, NO_LOSS};
use crate::{DataError, DataSpec, Example, IGNORE_INDEX};

pub struct Dataset {
    tokens: Mmap,
    index: Mmap,
    /// `Some(seq_len)` when examples are packed into rows.
    packed: Option<usize>,
    stats: CacheStats,
}

impl Dataset {
    /// Opens the cache that [`crate::prepare_cache`] built in `dir` for `spec` (every rank
    /// calls this after rank 0 prepared it); an error if it is missing or was made otherwise.
    pub fn open(spec: &DataSpec, dir: &Path) -> Result<Self, DataError> {
        let cache::OpenCache { tokens, index, stats } = cache::open(spec, dir)?;
        Ok(Self { tokens, index, packed: spec.packing.then_some(spec.seq_len), stats })
    }

    /// The number of rows: examples, or packed rows.
    pub fn len(&self) -> usize {
        match self.packed {
            Some(seq_len) => self.stats.tokens.div_ceil(seq_len as u64) as usize,
            None => self.stats.examples as usize,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Row `i` (in file order) as the model sees it, before batch padding.
    pub fn get(&self, i: usize) -> Example {
        assert!(i < self.len(), "row {i} of a dataset of {} rows", self.len());
        let (start, end) = match self.packed {
            Some(seq_len) => (i * seq_len, ((i + 1) * seq_len).min(self.stats.tokens as usize)),
            None => (self.example_start(i), self.example_start(i + 1)),
        };
        let (input_ids, labels) = self.tokens[4 * start..4 * end]
            .chunks_exact(4)
            .map(|b| {
                let t = u32::from_le_bytes(b.try_into().expect("4 bytes"));
                let id = t & !NO_LOSS;
                (id, if t & NO_LOSS == 0 { id as i64 } else { IGNORE_INDEX })
            })
            .unzip();
        Example { input_ids, labels }
    }

    /// The counts of the build: examples, tokens, truncated, skipped.
    pub fn stats(&self) -> &CacheStats {
        &self.stats
    }

    fn example_start(&self, i: usize) -> usize {
        u64::from_le_bytes(self.index[8 * i..8 * i + 8].try_into().expect("8 bytes")) as usize
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::tokenizer::tests::{fixtures, spec};
    use crate::{Format, prepare_cache};

    /// Builds `tests/fixtures/data/<name>.jsonl` and reads every row back.
    fn rows(format: Format, name: &str, seq_len: usize, packing: bool) -> Vec<Example> {
        let tmp = tempfile::tempdir().unwrap();
        let mut spec = DataSpec { source: data_fixture(name), seq_len, packing, ..spec(format) };
        if format == Format::Tokenized {
            (spec.tokenizer, spec.vocab_size) = (None, 1000);
        }
        prepare_cache(&spec, tmp.path(), &std::sync::atomic::AtomicBool::new(false)).unwrap();
        let dataset = Dataset::open(&spec, tmp.path()).unwrap();
        (0..dataset.len()).map(|i| dataset.get(i)).collect()
    }

    fn data_fixture(name: &str) -> PathBuf {
        fixtures().join("data").join(name)
    }

    /// `{"input_ids", "labels"}` per line, as written by tools/make_data_fixtures.py.
    fn expected(name: &str) -> Vec<Example> {
        let text = std::fs::read_to_string(data_fixture(name)).unwrap();
        text.lines()
            .map(|line| {
                let v: serde_json::Value = serde_json::from_str(line).unwrap();
                Example {
                    input_ids: serde_json::from_value(v["input_ids"].clone()).unwrap(),
                    labels: serde_json::from_value(v["labels"].clone()).unwrap(),
                }
            })
            .collect()
    }

    /// Each format against rows made independently in Python (HF `tokenizers`, and
    /// mistral-common for the chat format), with and without packing.
    #[test]
    fn every_format_matches_the_reference_rows() {
        let cases = [
            (Format::Tokenized, "tokenized"),
            (Format::Text, "text"),
            (Format::PromptCompletion, "prompt_completion"),
            (Format::Chat, "chat"),
        ];
        for (format, name) in cases {
            for (packing, suffix) in [(false, "rows"), (true, "packed")] {
                let ours = rows(format, &format!("{name}.jsonl"), 48, packing);
                let reference = expected(&format!("expected/{name}.{suffix}.jsonl"));
                assert_eq!(ours.len(), reference.len(), "{name} {suffix}");
                if packing {
                    assert!(ours[..ours.len() - 1].iter().all(|r| r.input_ids.len() == 48), "{name}: full rows");
                }
                for (i, (a, b)) in ours.iter().zip(&reference).enumerate() {
                    assert_eq!(a, b, "{name} {suffix} row {i}");
                }
            }
        }
    }

    /// Each kind of bad line, at line 4 after two good lines and a blank one: an error naming the
    /// file and line, or with `skip` one row fewer and the line counted.
    #[test]
    fn every_bad_input_names_its_line() {
        let good_ids = "{\"input_ids\": [1, 2]}\n";
        let good_text = "{\"prompt\": \"a\", \"completion\": \"b\"}\n";
        let cases = [
            (Format::Tokenized, "{\"input_ids\": [1, 2,]}", "invalid JSON", "trailing comma (column 21)"),
            (Format::Tokenized, "{\"labels\": [1]}", "a missing field", "missing field `input_ids`"),
            (Format::Tokenized, "{\"input_ids\": [1, \"2\"]}", "a wrong type", "invalid type: string \"2\", expected i64"),
            (Format::Tokenized, "{\"input_ids\": []}", "an empty example", "empty example: `input_ids` is []"),
            (
                Format::Tokenized,
                "{\"input_ids\": [1, 32000]}",
                "a token outside the vocabulary",
                "input_ids[1] = 32000 is outside the vocabulary (0..32000)",
            ),
            (
                Format::Tokenized,
                "{\"input_ids\": [1, 2], \"labels\": [1, 2, 3]}",
                "labels of another length",
                "`labels` has 3 entries, `input_ids` 2",
            ),
            (Format::PromptCompletion, "{\"prompt\": \"a\", \"completion\": \"b\"", "invalid JSON", "EOF while parsing an object"),
            (Format::PromptCompletion, "{\"prompt\": \"a\"}", "a missing field", "missing field `completion`"),
            (
                Format::PromptCompletion,
                "{\"prompt\": \"a\", \"completion\": [\"b\"]}",
                "a wrong type",
                "invalid type: sequence, expected a string",
            ),
            (Format::PromptCompletion, "{\"prompt\": \"a\", \"completion\": \"\"}", "an empty example", "empty example"),
        ];
        for (format, bad, what, why) in cases {
            let tmp = tempfile::tempdir().unwrap();
            let good = if format == Format::Tokenized { good_ids } else { good_text };
            let source = tmp.path().join("bad.jsonl");
            std::fs::write(&source, format!("{good}{good}\n{bad}\n{good}")).unwrap();
            let mut spec = DataSpec { source: source.clone(), ..spec(format) };
            let msg = prepare_cache(&spec, &tmp.path().join("cache"), &std::sync::atomic::AtomicBool::new(false)).unwrap_err().to_string();
            let at_line_4 = format!("{}:4: ", source.display());
            assert!(msg.starts_with(&at_line_4) && msg.contains(why), "{what}: {msg}");

            spec.on_bad_example = crate::OnBadExample::Skip;
            let stats = prepare_cache(&spec, &tmp.path().join("cache"), &std::sync::atomic::AtomicBool::new(false)).unwrap().stats;
            assert_eq!((stats.examples, stats.skipped), (3, 1), "{what}");
            assert_eq!(stats.first_skipped, vec![msg.clone()]);
            assert!(stats.to_string().ends_with(&format!("bad lines skipped: 1, first: {msg}")));
        }
    }
}
