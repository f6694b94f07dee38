//! The cache build's pipeline: the source bytes cut into chunks of whole lines, each chunk's
//! lines turned into examples in parallel (rayon), closed with EOS when packing, truncated, and
//! handed on in file order, so that line numbers and the first error are those of the file.

use std::ops::Range;
use std::path::Path;

use rayon::prelude::*;

use crate::cache::{CacheStats, token_with_mask};
use crate::format::LineEncoder;
use crate::progress::Progress;
use crate::{DataError, Example, IGNORE_INDEX, OnBadExample};

/// How lines become rows, besides the format.
pub(crate) struct RowRules {
    pub seq_len: usize,
    /// Packing: EOS closes every example that does not end with it.
    pub packing_eos: Option<u32>,
    pub on_bad_example: OnBadExample,
}

/// Examples of a chunk: their tokens one after the other, and each one's length.
pub(crate) struct Tokens {
    pub tokens: Vec<u32>,
    pub lengths: Vec<u32>,
}

/// Skipped lines named in the stats (the rest are only counted).
const SKIPPED_NAMED: usize = 10;

/// Tokenizes every line of `bytes` (the content of `path`), calling `sink` with each chunk's
/// examples in file order. `chunk_bytes` is the parallel grain.
pub(crate) fn tokenize(
    path: &Path,
    bytes: &[u8],
    encoder: &LineEncoder,
    rules: &RowRules,
    chunk_bytes: usize,
    sink: &mut dyn FnMut(&Tokens) -> Result<(), DataError>,
) -> Result<CacheStats, DataError> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes); // a UTF-8 byte order mark
    let chunks = chunk_bounds(bytes, chunk_bytes);
    let wave = 4 * rayon::current_num_threads();
    let name = path.file_name().unwrap_or(path.as_os_str()).display();
    let mut progress = Progress::new(format!("tokenizing {name}"), bytes.len() as u64);
    let mut stats = CacheStats::default();
    let mut lines_before = 0;
    for wave in chunks.chunks(wave) {
        let outs: Vec<Chunk> = wave.par_iter().map(|r| encode_chunk(&bytes[r.clone()], encoder, rules)).collect();
        for out in outs {
            let line = |local: usize| lines_before + local + 1;
            if let Some((local, why)) = out.error {
                return Err(DataError::BadExample { path: path.to_owned(), line: line(local), why });
            }
            for (local, why) in out.skipped {
                if stats.first_skipped.len() < SKIPPED_NAMED {
                    stats.first_skipped.push(format!("{}:{}: {why}", path.display(), line(local)));
                }
                stats.skipped += 1;
            }
            sink(&out.rows)?;
            lines_before += out.lines;
            stats.examples += out.rows.lengths.len() as u64;
            stats.tokens += out.rows.tokens.len() as u64;
            stats.truncated += out.truncated;
            stats.tokens_with_loss += out.tokens_with_loss;
        }
        progress.set(wave.last().map_or(0, |r| r.end as u64));
    }
    progress.finish();
    if stats.examples == 0 {
        let skipped = match stats.first_skipped.first() {
            Some(first) => format!(" ({} bad lines skipped, first: {first})", stats.skipped),
            None => String::new(),
        };
        return Err(DataError::Empty { path: path.to_owned(), skipped });
    }
    if stats.tokens_with_loss == 0 {
        return Err(DataError::NoTargets(path.to_owned()));
    }
    Ok(stats)
}

/// Ranges of about `target` bytes that end after a newline (or at the end).
fn chunk_bounds(bytes: &[u8], target: usize) -> Vec<Range<usize>> {
    let mut bounds = Vec::new();
    let mut start = 0;
    while start < bytes.len() {
        let cut = (start + target.max(1)).min(bytes.len());
        let end = bytes[cut..].iter().position(|&b| b == b'\n').map_or(bytes.len(), |p| cut + p + 1);
        bounds.push(start..end);
        start = end;
    }
    bounds
}

/// What one chunk's lines became; line numbers are 0-based within the chunk.
struct Chunk {
    rows: Tokens,
    lines: usize,
    truncated: u64,
    tokens_with_loss: u64,
    skipped: Vec<(usize, String)>,
    /// The first bad line, when bad lines are errors; the chunk stops there.
    error: Option<(usize, String)>,
}

fn encode_chunk(bytes: &[u8], encoder: &LineEncoder, rules: &RowRules) -> Chunk {
    let mut out = Chunk {
        rows: Tokens { tokens: Vec::with_capacity(bytes.len() / 3), lengths: Vec::new() },
        lines: 0,
        truncated: 0,
        tokens_with_loss: 0,
        skipped: Vec::new(),
        error: None,
    };
    for (i, line) in bytes.split_inclusive(|&b| b == b'\n').enumerate() {
        out.lines = i + 1;
        let line = line.trim_ascii();
        if line.is_empty() {
            continue;
        }
        let pushed = encoder.encode(line).and_then(|example| out.push(example, rules));
        match pushed {
            Ok(()) => {}
            Err(why) if rules.on_bad_example == OnBadExample::Skip => out.skipped.push((i, why)),
            Err(why) => {
                out.error = Some((i, why));
                break;
            }
        }
    }
    out
}

impl Chunk {
    /// Adds `example` as training will see it, or says why it cannot be trained on.
    fn push(&mut self, mut example: Example, rules: &RowRules) -> Result<(), String> {
        if let Some(eos) = rules.packing_eos
            && example.input_ids.last() != Some(&eos)
        {
            // The example's end is learnt where it ends with loss.
            let loss = example.labels.last() != Some(&IGNORE_INDEX);
            example.input_ids.push(eos);
            example.labels.push(if loss { eos as i64 } else { IGNORE_INDEX });
        }
        // Cut after closing, so that a packed example, EOS included, always fits a row; one cut
        // loses its EOS with its end.
        let truncated = example.input_ids.len() > rules.seq_len;
        if truncated {
            example.input_ids.truncate(rules.seq_len);
            example.labels.truncate(rules.seq_len);
        }
        if rules.packing_eos.is_none() {
            unpacked_example_predicts_something(&example, truncated)?;
        }
        self.truncated += u64::from(truncated);
        self.tokens_with_loss += example.labels.iter().filter(|&&l| l != IGNORE_INDEX).count() as u64;
        let tokens = example.input_ids.iter().zip(&example.labels).map(|(&t, &l)| token_with_mask(t, l != IGNORE_INDEX));
        self.rows.tokens.extend(tokens);
        self.rows.lengths.push(example.input_ids.len() as u32);
        Ok(())
    }
}

/// An example trained as a row of its own is a bad example when it has nothing to predict: one
/// token (position t predicts t + 1), or no label with loss after the first (whose label is
/// never predicted). Packed, an example's tokens share rows with the others, and only a dataset
/// without any token with loss is refused (in [`tokenize`]).
fn unpacked_example_predicts_something(example: &Example, truncated: bool) -> Result<(), String> {
    let after_truncation = if truncated { " after truncation to data.seq_len" } else { "" };
    if example.input_ids.len() < 2 {
        return Err("too short to predict anything: 1 token (each token predicts the next one)".into());
    }
    if example.labels[1..].iter().all(|&l| l == IGNORE_INDEX) {
        return Err(format!("no label with loss{after_truncation}: every label after the first is -100, so nothing is trained on"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(text: &str, rules: &RowRules, chunk_bytes: usize) -> Result<(Vec<Vec<u32>>, CacheStats), DataError> {
        let spec = crate::DataSpec { vocab_size: 100, ..crate::tokenizer::tests::spec(crate::Format::Tokenized) };
        let encoder = LineEncoder::new(&spec, None, crate::Specials { bos: None, eos: None }).unwrap();
        let mut examples = Vec::new();
        let stats = tokenize(Path::new("d.jsonl"), text.as_bytes(), &encoder, rules, chunk_bytes, &mut |rows| {
            let mut at = 0;
            for &n in &rows.lengths {
                examples.push(rows.tokens[at..at + n as usize].to_vec());
                at += n as usize;
            }
            Ok(())
        })?;
        Ok((examples, stats))
    }

    const NO: u32 = crate::cache::NO_LOSS;
    const PLAIN: RowRules = RowRules { seq_len: 4, packing_eos: None, on_bad_example: OnBadExample::Error };

    #[test]
    fn chunks_end_after_newlines() {
        let text = b"ab\ncdef\n\ng";
        assert_eq!(chunk_bounds(text, 1), vec![0..3, 3..8, 8..10]);
        assert_eq!(chunk_bounds(text, 5), vec![0..8, 8..10]);
        assert_eq!(chunk_bounds(text, 100), vec![0..10]);
        assert!(chunk_bounds(b"", 4).is_empty());
    }

    #[test]
    fn file_order_masks_and_truncation_for_any_chunk_size() {
        let text = "\u{FEFF}{\"input_ids\": [1, 2]}\r\n\n{\"input_ids\": [3, 4, 5, 6, 7], \"labels\": [-100, 4, 5, 6, 7]}\n{\"input_ids\": [9, 8]}";
        for chunk_bytes in [1, 10, 30, 1000] {
            let (examples, stats) = run(text, &PLAIN, chunk_bytes).unwrap();
            assert_eq!(examples, vec![vec![1, 2], vec![3 | NO, 4, 5, 6], vec![9, 8]], "chunk {chunk_bytes}");
            assert_eq!((stats.examples, stats.tokens, stats.truncated, stats.skipped), (3, 8, 1, 0));
        }
    }

    #[test]
    fn packing_closes_examples_with_eos() {
        let rules = RowRules { packing_eos: Some(2), ..PLAIN };
        let text = "{\"input_ids\": [1, 5, 2]}\n{\"input_ids\": [1, 6], \"labels\": [-100, 6]}\n\
                    {\"input_ids\": [1, 7], \"labels\": [-100, -100]}\n{\"input_ids\": [1, 8, 8, 8, 8]}\n";
        let (examples, stats) = run(text, &rules, 1000).unwrap();
        // Unchanged when it ends with EOS; EOS with loss after a token with loss; without loss after
        // a masked token; a truncated example cut to seq_len with its EOS, which never fits.
        assert_eq!(examples, vec![vec![1, 5, 2], vec![1 | NO, 6, 2], vec![1 | NO, 7 | NO, 2 | NO], vec![1, 8, 8, 8]]);
        assert_eq!((stats.tokens_with_loss, stats.truncated), (9, 1));
    }

    #[test]
    fn bad_lines_give_the_file_line_from_any_chunk() {
        let good = "{\"input_ids\": [1, 2]}\n";
        let text = format!("{}\n{good}{{\"input_ids\": [1, 200]}}\n{good}{{oops\n", good.repeat(40));
        for chunk_bytes in [1, 64, 1 << 20] {
            let msg = run(&text, &PLAIN, chunk_bytes).unwrap_err().to_string();
            assert_eq!(msg, "d.jsonl:43: input_ids[1] = 200 is outside the vocabulary (0..100)", "chunk {chunk_bytes}");
        }
        let skip = RowRules { on_bad_example: OnBadExample::Skip, ..PLAIN };
        let (examples, stats) = run(&text, &skip, 64).unwrap();
        assert_eq!((examples.len(), stats.skipped), (42, 2));
        assert_eq!(stats.first_skipped[1], "d.jsonl:45: key must be a string (column 2)");
    }

    #[test]
    fn nothing_to_train_on_is_an_error() {
        let msg = run("\n\n", &PLAIN, 64).unwrap_err().to_string();
        assert_eq!(msg, "d.jsonl holds no examples");
        let skip = RowRules { on_bad_example: OnBadExample::Skip, ..PLAIN };
        assert!(run("{\"input_ids\": []}\n", &skip, 64).is_err());
    }

    /// Examples with nothing to predict, as rows of their own: one token, or no label with loss
    /// after the first (also when truncation cut the labelled part away). Refused with the line,
    /// or skipped and counted; a dataset of nothing else is an error either way.
    #[test]
    fn examples_that_predict_nothing_are_bad_examples() {
        let text = "{\"input_ids\": [1, 2]}\n{\"input_ids\": [7]}\n{\"input_ids\": [1, 2, 3], \"labels\": [1, -100, -100]}\n\
                    {\"input_ids\": [1, 2, 3, 4, 5], \"labels\": [-100, -100, -100, -100, 5]}\n";
        let msg = run(text, &PLAIN, 64).unwrap_err().to_string();
        assert_eq!(msg, "d.jsonl:2: too short to predict anything: 1 token (each token predicts the next one)");
        let skip = RowRules { on_bad_example: OnBadExample::Skip, ..PLAIN };
        let (examples, stats) = run(text, &skip, 64).unwrap();
        assert_eq!((examples, stats.skipped), (vec![vec![1, 2]], 3));
        assert!(stats.first_skipped[1].starts_with("d.jsonl:3: no label with loss: every label after the first is -100"));
        assert!(stats.first_skipped[2].starts_with("d.jsonl:4: no label with loss after truncation to data.seq_len"));

        let all_masked = "{\"input_ids\": [1, 2], \"labels\": [-100, -100]}\n{\"input_ids\": [3, 4], \"labels\": [-100, -100]}\n";
        let msg = run(all_masked, &skip, 64).unwrap_err().to_string();
        assert!(msg.starts_with("d.jsonl holds no examples (2 bad lines skipped, first: d.jsonl:1: no label with loss"), "{msg}");
        // Packed, the examples are rows' context; a dataset without any token with loss is refused.
        let packed = RowRules { packing_eos: Some(2), ..PLAIN };
        let msg = run(&all_masked.replace("[1, 2]", "[1, 5]").replace("[3, 4]", "[3, 2]"), &packed, 64).unwrap_err().to_string();
        assert_eq!(msg, "d.jsonl: no token carries loss (every label is -100): there is nothing to train on");
    }
}
