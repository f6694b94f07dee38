//! `shard-train plot RUN_DIR... [--out FILE]`: the loss curves of several runs on one chart.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Result;
use shard_train_core::chart::{Curves, draw};

#[derive(clap::Args)]
pub struct PlotArgs {
    /// Runs' output directories (output.dir, with its metrics.jsonl).
    #[arg(required = true)]
    runs: Vec<PathBuf>,
    /// The SVG file to write.
    #[arg(long, default_value = "loss.svg")]
    out: PathBuf,
}

pub fn run(args: PlotArgs) -> Result<()> {
    let mut out = std::io::stdout().lock();
    let runs = args.runs.iter().map(|dir| Curves::read(dir)).collect::<Result<Vec<_>>>()?;
    draw(&runs, &args.out)?;
    writeln!(out, "wrote {}", args.out.display())?;
    Ok(())
}
