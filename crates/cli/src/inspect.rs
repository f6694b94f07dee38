//! `shard-train inspect --model DIR`: the architecture and its exact parameter count, from
//! config.json alone.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Result;
use shard_model::MistralConfig;

#[derive(clap::Args)]
pub struct InspectArgs {
    /// A checkpoint directory, or a config.json.
    #[arg(long)]
    model: PathBuf,
    /// Print `{"param_count": N, "shapes": {name: shape}}` instead of a summary.
    #[arg(long)]
    json: bool,
}

pub fn run(args: InspectArgs) -> Result<()> {
    let mut out = std::io::stdout().lock();
    let path = if args.model.is_dir() { args.model.join("config.json") } else { args.model };
    let cfg = MistralConfig::from_file(&path)?;
    if args.json {
        writeln!(out, "{}", shard_plan::architecture_json(&cfg))?;
        return Ok(());
    }
    write!(out, "{}", shard_plan::architecture(&cfg))?;
    Ok(())
}
