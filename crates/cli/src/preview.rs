//! `shard-train data preview --config FILE.toml [--n 5] [--json]`: the first rows exactly as
//! training sees them (the same cache, after truncation and packing), the tokens that carry no
//! loss marked, so that data can be checked before paying for a run. Needs no MPI.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use anyhow::Result;
use shard_data::{Dataset, Example, IGNORE_INDEX, TextTokenizer, prepare_cache};
use shard_model::MistralConfig;

use shard_train_core::run_config::RunConfig;

#[derive(clap::Args)]
pub struct PreviewArgs {
    /// The run config (TOML).
    #[arg(long)]
    config: PathBuf,
    /// How many rows to show.
    #[arg(long, default_value_t = 5)]
    n: usize,
    /// Print one `{"input_ids": [...], "labels": [...]}` per row.
    #[arg(long)]
    json: bool,
}

pub fn run(args: PreviewArgs) -> Result<()> {
    let mut out = std::io::stdout().lock();
    let run = RunConfig::load(&args.config)?;
    let model = MistralConfig::from_file(&run.model_config_path())?;
    let spec = run.data_spec(&model);
    let dir = run.data_cache_dir();
    let prepared = prepare_cache(&spec, &dir)?;
    eprintln!("{} {}: {}", if prepared.built { "built" } else { "reused" }, dir.display(), prepared.stats);
    let dataset = Dataset::open(&spec, &dir)?;
    let n = args.n.min(dataset.len());
    eprintln!("rows 0..{n} of {} in file order (training order: data.shuffle, data.seed)", dataset.len());

    let rows = (0..n).map(|i| dataset.get(i));
    if args.json {
        for row in rows {
            writeln!(out, "{}", serde_json::json!({ "input_ids": row.input_ids, "labels": row.labels }))?;
        }
        return Ok(());
    }
    let tokenizer = spec.tokenizer.as_deref().map(TextTokenizer::from_file).transpose()?;
    let marks = Marks::for_stdout();
    for (i, row) in rows.enumerate() {
        let with_loss = row.labels.iter().filter(|&&l| l != IGNORE_INDEX).count();
        writeln!(out, "row {i}: {} tokens, {with_loss} with loss ({}no loss{})", row.input_ids.len(), marks.open, marks.close)?;
        if let Some(tokenizer) = &tokenizer {
            writeln!(out, "{}", marked_text(&row, tokenizer, &marks)?)?;
        }
        let ids = runs(&row).map(|(r, loss)| marks.wrap(&join_ids(&row.input_ids[r]), loss)).collect::<Vec<_>>();
        writeln!(out, "{}\n", ids.join(" "))?;
    }
    Ok(())
}

/// How the tokens without loss are set apart: dim on a terminal, brackets otherwise.
struct Marks {
    open: &'static str,
    close: &'static str,
}

impl Marks {
    fn for_stdout() -> Self {
        if std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none() {
            Self { open: "\x1b[2m", close: "\x1b[0m" }
        } else {
            Self { open: "⟦", close: "⟧" }
        }
    }

    fn wrap(&self, text: &str, loss: bool) -> String {
        if loss { text.to_owned() } else { format!("{}{text}{}", self.open, self.close) }
    }
}

/// The row's text, decoded with its special tokens, the runs without loss marked. Each run is
/// what decoding up to its end adds to decoding up to its start, so words keep their spaces.
fn marked_text(row: &Example, tokenizer: &TextTokenizer, marks: &Marks) -> Result<String> {
    let mut out = String::new();
    let mut before = String::new();
    for (r, loss) in runs(row) {
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

/// Maximal runs of tokens that all carry loss or all do not.
fn runs(row: &Example) -> impl Iterator<Item = (std::ops::Range<usize>, bool)> + '_ {
    let loss = |i: usize| row.labels[i] != IGNORE_INDEX;
    let mut start = 0;
    std::iter::from_fn(move || {
        if start == row.labels.len() {
            return None;
        }
        let end = (start..row.labels.len()).find(|&i| loss(i) != loss(start)).unwrap_or(row.labels.len());
        let run = (start..end, loss(start));
        start = end;
        Some(run)
    })
}

fn join_ids(ids: &[u32]) -> String {
    ids.iter().map(u32::to_string).collect::<Vec<_>>().join(" ")
}
