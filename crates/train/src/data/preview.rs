//! A dataset row as `data preview` shows it: the decoded text and the token ids, the runs of
//! tokens without loss marked, and in a packed row the boundaries between its examples.

use std::path::{Path, PathBuf};

use anyhow::Result;
use shard_data::{DataSpec, Dataset, IGNORE_INDEX, Prepared, Row, TextTokenizer, prepare_cache};
use shard_model::MistralConfig;

use crate::config::run_config::{Override, RunConfig};

/// A run config's dataset as training sees it, its cache built or found up to date.
pub struct PreviewData {
    pub spec: DataSpec,
    /// Where the cache is.
    pub dir: PathBuf,
    pub prepared: Prepared,
    pub dataset: Dataset,
}

impl PreviewData {
    /// The dataset of the run config at `config`, with `overrides` (`--set`).
    pub fn open(config: &Path, overrides: &[Override]) -> Result<Self> {
        let run = RunConfig::load(config, overrides)?;
        let spec = run.data_spec(&MistralConfig::from_file(&run.model_config_path())?);
        let dir = run.data_cache_dir();
        let prepared = prepare_cache(&spec, &dir, &std::sync::atomic::AtomicBool::new(false))?;
        let dataset = Dataset::open(&spec, &dir)?;
        Ok(Self { spec, dir, prepared, dataset })
    }
}

/// Between two examples of a packed row.
pub const BOUNDARY: &str = "||";

/// The row's heading, text (with a tokenizer) and ids, one per line, marked with `marks`; a
/// packed row's examples are set apart by [`BOUNDARY`], and the heading says where each starts.
pub fn describe_row(i: usize, row: &Row, tokenizer: Option<&TextTokenizer>, marks: &Marks) -> Result<String> {
    let with_loss = row.labels.iter().filter(|&&l| l != IGNORE_INDEX).count();
    let mut out = format!("row {i}: {} tokens, {with_loss} with loss ({}no loss{})", row.input_ids.len(), marks.open, marks.close);
    if row.starts.len() > 1 {
        let starts = row.starts.iter().map(u32::to_string).collect::<Vec<_>>().join(", ");
        out.push_str(&format!(
            "; {} examples at tokens {starts}, each attending only to itself, positions from 0 after each {BOUNDARY}",
            row.starts.len()
        ));
    }
    out.push('\n');
    if let Some(tokenizer) = tokenizer {
        out.push_str(&marked_text(row, tokenizer, marks)?);
        out.push('\n');
    }
    let ids = runs(row).map(|(r, loss)| boundary_before(row, &r, " ") + &marks.wrap(&join_ids(&row.input_ids[r]), loss));
    out.push_str(&ids.collect::<Vec<_>>().join(" "));
    out.push('\n');
    Ok(out)
}

/// [`BOUNDARY`] and `gap` where `run` starts an example other than the row's first.
fn boundary_before(row: &Row, run: &std::ops::Range<usize>, gap: &str) -> String {
    if run.start > 0 && row.starts.contains(&(run.start as u32)) { format!("{BOUNDARY}{gap}") } else { String::new() }
}

/// How the tokens without loss are set apart: dim on a terminal, brackets otherwise.
pub struct Marks {
    open: &'static str,
    close: &'static str,
}

impl Marks {
    /// Dim (ANSI) for a colour terminal, `⟦…⟧` otherwise.
    pub fn new(dim: bool) -> Self {
        if dim { Self { open: "\x1b[2m", close: "\x1b[0m" } } else { Self { open: "⟦", close: "⟧" } }
    }

    fn wrap(&self, text: &str, loss: bool) -> String {
        if loss { text.to_owned() } else { format!("{}{text}{}", self.open, self.close) }
    }
}

/// The row's text, decoded with its special tokens, the runs without loss marked. Each run is
/// what decoding up to its end adds to decoding up to its start, so words keep their spaces.
fn marked_text(row: &Row, tokenizer: &TextTokenizer, marks: &Marks) -> Result<String> {
    let mut out = String::new();
    let mut before = String::new();
    for (r, loss) in runs(row) {
        out.push_str(&boundary_before(row, &r, ""));
        let upto = tokenizer.decode(&row.input_ids[..r.end], false)?;
        let piece = match upto.strip_prefix(before.as_str()) {
            Some(piece) => piece.to_owned(),
            None => tokenizer.decode(&row.input_ids[r], false)?,
        };
        out.push_str(&marks.wrap(&piece, loss));
        before = upto;
    }
    Ok(out)
}

/// Maximal runs of tokens of one example that all carry loss or all do not.
fn runs(row: &Row) -> impl Iterator<Item = (std::ops::Range<usize>, bool)> + '_ {
    let loss = |i: usize| row.labels[i] != IGNORE_INDEX;
    let starts_example = |i: usize| row.starts.contains(&(i as u32));
    let mut start = 0;
    std::iter::from_fn(move || {
        if start == row.labels.len() {
            return None;
        }
        let end = (start + 1..row.labels.len()).find(|&i| loss(i) != loss(start) || starts_example(i)).unwrap_or(row.labels.len());
        let run = (start..end, loss(start));
        start = end;
        Some(run)
    })
}

fn join_ids(ids: &[u32]) -> String {
    ids.iter().map(u32::to_string).collect::<Vec<_>>().join(" ")
}
