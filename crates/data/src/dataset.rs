//! A built cache as rows to train on: one row per example, or with packing whole examples
//! packed into rows of at most `seq_len` tokens (first-fit decreasing, [`crate::packing`]).
//! Tokens are read from the memory map on demand, so no process holds the dataset in memory.

use std::fmt;
use std::path::Path;

use memmap2::Mmap;

use crate::cache::{self, CacheStats, NO_LOSS};
use crate::packing::first_fit_decreasing;
use crate::{DataError, DataSpec, IGNORE_INDEX, Row};

pub struct Dataset {
    tokens: Mmap,
    index: Mmap,
    /// With packing, the examples of each row.
    packed: Option<Packed>,
    stats: CacheStats,
}

/// Packed rows: row `r` holds `examples[row_ends[r - 1]..row_ends[r]]` (from 0 for row 0).
struct Packed {
    examples: Vec<u32>,
    row_ends: Vec<usize>,
    summary: PackingSummary,
}

/// How full the packed rows are: the start-up line of a packed run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PackingSummary {
    pub examples: u64,
    pub rows: u64,
    pub seq_len: usize,
    /// Real tokens (EOS separators included).
    pub tokens: u64,
}

impl PackingSummary {
    /// Real tokens / the rows' capacity (rows x seq_len).
    pub fn efficiency(&self) -> f64 {
        self.tokens as f64 / (self.rows as f64 * self.seq_len as f64).max(1.0)
    }
}

impl fmt::Display for PackingSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "packing: {} in {} of {} tokens ({:.2} examples a row), {:.1}% of the rows' capacity is real tokens",
            shard_core::counted(self.examples, "example"),
            shard_core::counted(self.rows, "row"),
            self.seq_len,
            self.examples as f64 / (self.rows as f64).max(1.0),
            100.0 * self.efficiency()
        )
    }
}

impl Dataset {
    /// Opens the cache that [`crate::prepare_cache`] built in `dir` for `spec` (every rank
    /// calls this after rank 0 prepared it); an error if it is missing or was made otherwise.
    /// With packing, every rank packs the examples into the same rows.
    pub fn open(spec: &DataSpec, dir: &Path) -> Result<Self, DataError> {
        let cache::OpenCache { tokens, index, stats } = cache::open(spec, dir)?;
        let mut dataset = Self { tokens, index, packed: None, stats };
        if spec.packing {
            dataset.packed = Some(dataset.pack(spec.seq_len));
        }
        Ok(dataset)
    }

    fn pack(&self, seq_len: usize) -> Packed {
        let examples = self.stats.examples as usize;
        let lengths: Vec<u32> = (0..examples).map(|i| (self.example_start(i + 1) - self.example_start(i)) as u32).collect();
        let rows = first_fit_decreasing(&lengths, seq_len as u32);
        let row_ends = rows.iter().scan(0, |end, row| {
            *end += row.len();
            Some(*end)
        });
        let summary = PackingSummary { examples: examples as u64, rows: rows.len() as u64, seq_len, tokens: self.stats.tokens };
        Packed { row_ends: row_ends.collect(), examples: rows.into_iter().flatten().collect(), summary }
    }

    /// The number of rows: examples, or packed rows.
    pub fn len(&self) -> usize {
        match &self.packed {
            Some(packed) => packed.row_ends.len(),
            None => self.stats.examples as usize,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Row `i` (in packing order, or file order) as the model sees it, before batch padding.
    pub fn get(&self, i: usize) -> Row {
        assert!(i < self.len(), "row {i} of a dataset of {} rows", self.len());
        let Some(packed) = &self.packed else {
            return self.example(i);
        };
        let first = if i == 0 { 0 } else { packed.row_ends[i - 1] };
        let mut row = Row { input_ids: Vec::new(), labels: Vec::new(), starts: Vec::new() };
        for &e in &packed.examples[first..packed.row_ends[i]] {
            let example = self.example(e as usize);
            row.starts.push(row.input_ids.len() as u32);
            row.input_ids.extend(example.input_ids);
            // An example's first token is never a target: nothing before it in the row is its own.
            row.labels.push(IGNORE_INDEX);
            row.labels.extend(&example.labels[1..]);
        }
        row
    }

    /// With packing, how full the rows are.
    pub fn packing_summary(&self) -> Option<PackingSummary> {
        self.packed.as_ref().map(|p| p.summary)
    }

    /// The counts of the build: examples, tokens, truncated, skipped.
    pub fn stats(&self) -> &CacheStats {
        &self.stats
    }

    /// Example `i` of the cache, as a row of its own.
    fn example(&self, i: usize) -> Row {
        let (start, end) = (self.example_start(i), self.example_start(i + 1));
        let (input_ids, labels) = self.tokens[4 * start..4 * end]
            .chunks_exact(4)
            .map(|b| {
                let t = u32::from_le_bytes(b.try_into().expect("4 bytes"));
                let id = t & !NO_LOSS;
                (id, if t & NO_LOSS == 0 { id as i64 } else { IGNORE_INDEX })
            })
            .unzip();
        Row { input_ids, labels, starts: vec![0] }
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
    use crate::{Format, OnBadExample, prepare_cache};

    /// Builds `spec`'s dataset and reads every row back.
    fn rows_of(spec: DataSpec, seq_len: usize, packing: bool) -> Vec<Row> {
        let tmp = tempfile::tempdir().unwrap();
        // The fixtures hold examples that predict nothing, which the reference keeps as rows:
        // skipped here (see `predicts_something`).
        let mut spec = DataSpec { seq_len, packing, on_bad_example: OnBadExample::Skip, ..spec };
        if spec.format == Format::Tokenized {
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
    /// `{"input_ids", "labels"}` and, for packed rows, `"starts"`.
    fn expected(name: &str) -> Vec<Row> {
        let text = std::fs::read_to_string(data_fixture(name)).unwrap();
        text.lines()
            .map(|line| {
                let v: serde_json::Value = serde_json::from_str(line).unwrap();
                Row {
                    input_ids: serde_json::from_value(v["input_ids"].clone()).unwrap(),
                    labels: serde_json::from_value(v["labels"].clone()).unwrap(),
                    starts: serde_json::from_value(v.get("starts").cloned().unwrap_or(serde_json::json!([0]))).unwrap(),
                }
            })
            .collect()
    }

    /// Whether a reference row (unpacked) is one training can learn from: two tokens or more,
    /// and a label with loss after the first. The others are bad examples (build.rs).
    fn predicts_something(row: &Row) -> bool {
        row.input_ids.len() >= 2 && row.labels[1..].iter().any(|&l| l != IGNORE_INDEX)
    }

    /// Each format against rows made independently in Python (HF `tokenizers`, mistral-common
    /// for the chat format, transformers' `apply_chat_template` for `messages` with a template),
    /// with and without packing; without packing, the reference's rows that predict nothing are
    /// skipped bad examples.
    #[test]
    fn every_format_matches_the_reference_rows() {
        let template = data_fixture("chat_template.jinja");
        let cases = [
            (Format::Tokenized, "tokenized", "tokenized", None),
            (Format::Text, "text", "text", None),
            (Format::PromptCompletion, "prompt_completion", "prompt_completion", None),
            (Format::Chat, "chat", "chat", None),
            (Format::Alpaca, "alpaca", "alpaca", None),
            (Format::Messages, "messages", "messages", None),
            (Format::Messages, "messages", "messages-template", Some(template)),
        ];
        for (format, source, name, chat_template) in cases {
            let spec = DataSpec { source: data_fixture(&format!("{source}.jsonl")), chat_template, ..spec(format) };
            for (packing, suffix) in [(false, "rows"), (true, "packed")] {
                assert_matches_reference(rows_of(spec.clone(), 48, packing), &format!("{name}.{suffix}"), packing);
            }
        }
    }

    /// `ours` equal to `expected/<name>.jsonl`.
    fn assert_matches_reference(ours: Vec<Row>, name: &str, packing: bool) {
        let mut reference = expected(&format!("expected/{name}.jsonl"));
        if !packing {
            reference.retain(predicts_something);
        }
        assert_eq!(ours.len(), reference.len(), "{name}");
        assert!(ours.iter().all(|r| r.input_ids.len() <= 48), "{name}: a row over seq_len");
        for (i, (a, b)) in ours.iter().zip(&reference).enumerate() {
            assert_eq!(a, b, "{name} row {i}");
        }
    }

    /// The alpaca fixture with other key names, read through `data.fields`: the same rows.
    #[test]
    fn renamed_keys_through_fields_give_the_same_rows() {
        let tmp = tempfile::tempdir().unwrap();
        let source = tmp.path().join("renamed.jsonl");
        let text = std::fs::read_to_string(data_fixture("alpaca.jsonl")).unwrap();
        std::fs::write(&source, text.replace("\"instruction\":", "\"question\":").replace("\"output\":", "\"answer\":")).unwrap();
        let fields = crate::Fields([("instruction", "question"), ("output", "answer")].map(|(a, b)| (a.into(), b.into())).into());
        let spec = DataSpec { source, fields, ..spec(Format::Alpaca) };
        assert_matches_reference(rows_of(spec.clone(), 48, false), "alpaca.rows", false);

        let unmapped = DataSpec { fields: Default::default(), on_bad_example: OnBadExample::Error, ..spec };
        let msg = prepare_cache(&unmapped, &tmp.path().join("cache"), &std::sync::atomic::AtomicBool::new(false)).unwrap_err().to_string();
        assert!(msg.contains("renamed.jsonl:1: missing field `instruction`"), "{msg}");
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
