//! `shard-train inspect --model DIR`: the architecture and its exact parameter count, from
//! config.json alone.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Result;
use shard_model::{MistralConfig, all_params, param_count};

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
        let shapes: serde_json::Map<String, serde_json::Value> =
            all_params(&cfg).into_iter().map(|p| (p.name, p.shape.into())).collect();
        writeln!(out, "{}", serde_json::json!({ "param_count": param_count(&cfg), "shapes": shapes }))?;
        return Ok(());
    }
    write!(out, "{}", shard_plan::architecture(&cfg))?;
    Ok(())
}
