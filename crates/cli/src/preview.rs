//! `shard-train data preview --config FILE.toml [--n 5] [--json]`: the first rows exactly as
//! training sees them (the same cache, after truncation and packing), the tokens that carry no
//! loss marked, so that data can be checked before paying for a run. Needs no MPI.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use anyhow::Result;
use shard_data::{Format, TemplateSource, TextTokenizer};
use shard_train_core::config::run_config::{Override, parse_override};
use shard_train_core::data::preview::{Marks, PreviewData, describe_row};

#[derive(clap::Args)]
pub struct PreviewArgs {
    /// The run config (TOML).
    #[arg(long)]
    config: PathBuf,
    /// Override a key of the run config, as `train --set` does (repeatable), e.g.
    /// `--set data.packing=true`.
    #[arg(long = "set", value_name = "KEY=VALUE", value_parser = parse_override)]
    overrides: Vec<Override>,
    /// How many rows to show.
    #[arg(long, default_value_t = 5)]
    n: usize,
    /// Print one `{"input_ids": [...], "labels": [...]}` per row (with packing also `"starts"`,
    /// where each of the row's examples starts).
    #[arg(long)]
    json: bool,
}

pub fn run(args: PreviewArgs) -> Result<()> {
    let mut out = std::io::stdout().lock();
    let PreviewData { spec, dir, prepared, dataset } = PreviewData::open(&args.config, &args.overrides)?;
    eprintln!("{} {}: {}", if prepared.built { "built" } else { "reused" }, dir.display(), prepared.stats);
    let n = args.n.min(dataset.len());
    if let Some(packing) = dataset.packing_summary() {
        eprintln!("{packing}");
    }
    if spec.format == Format::Messages {
        match TemplateSource::find(spec.chat_template.as_deref(), spec.tokenizer.as_deref())? {
            Some(template) => eprintln!("chat template: {}", template.origin),
            None => eprintln!("chat template: none with the tokenizer, so Mistral's [INST] (as format = \"chat\")"),
        }
    }
    let order = if spec.packing { "packing order" } else { "file order" };
    eprintln!("rows 0..{n} of {} in {order} (training order: data.shuffle, data.seed)", dataset.len());

    let rows = (0..n).map(|i| dataset.get(i));
    if args.json {
        for row in rows {
            let json = if spec.packing {
                serde_json::json!({ "input_ids": row.input_ids, "labels": row.labels, "starts": row.starts })
            } else {
                serde_json::json!({ "input_ids": row.input_ids, "labels": row.labels })
            };
            writeln!(out, "{json}")?;
        }
        return Ok(());
    }
    let tokenizer = spec.tokenizer.as_deref().map(TextTokenizer::from_file).transpose()?;
    let marks = Marks::new(std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none());
    for (i, row) in rows.enumerate() {
        writeln!(out, "{}", describe_row(i, &row, tokenizer.as_ref(), &marks)?)?;
    }
    Ok(())
}
