//! `shard-train plot RUN_DIR... [--out FILE]`: the loss curves of several runs on one chart.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Result, bail};
use shard_train_core::metrics::chart::{ChartOptions, Curves, XAxis, draw};

#[derive(clap::Args)]
pub struct PlotArgs {
    /// Runs' output directories (output.dir, with its metrics.jsonl).
    #[arg(required = true)]
    runs: Vec<PathBuf>,
    /// The SVG file to write.
    #[arg(long, default_value = "loss.svg")]
    out: PathBuf,
    /// What the horizontal axis counts: steps, tokens (lines up runs of other batch sizes by the
    /// data they saw) or time (seconds of training).
    #[arg(long, value_enum, default_value_t = X::Steps)]
    x: X,
    /// A log-scale loss axis (by default only when the losses span a decade or more).
    #[arg(long)]
    log_y: bool,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum X {
    Steps,
    Tokens,
    Time,
}

pub fn run(args: PlotArgs) -> Result<()> {
    if !args.out.extension().is_some_and(|e| e.eq_ignore_ascii_case("svg")) {
        bail!(
            "--out {}: plot writes SVG only; name the file .svg (a browser shows it; `rsvg-convert -o x.png {}` makes a PNG)",
            args.out.display(),
            args.out.with_extension("svg").display()
        );
    }
    let x = match args.x {
        X::Steps => XAxis::Steps,
        X::Tokens => XAxis::Tokens,
        X::Time => XAxis::Time,
    };
    let runs = args.runs.iter().map(|dir| Curves::read(dir, x)).collect::<Result<Vec<_>>>()?;
    draw(&runs, &args.out, &ChartOptions { x, log_y: args.log_y.then_some(true) })?;
    writeln!(std::io::stdout().lock(), "wrote {}", args.out.display())?;
    Ok(())
}
