//! `shard-train inspect --model DIR`: the architecture and its exact parameter count, from
//! config.json alone.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Result;
use shard_model::{Block, MistralConfig, all_params, param_count};
use shard_plan::group_digits;

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
    write!(out, "{}", summary(&cfg))?;
    Ok(())
}

fn summary(cfg: &MistralConfig) -> String {
    let window = cfg.sliding_window.map_or("none (full causal)".to_owned(), |w| w.to_string());
    let block_params = |b: Block| b.params(cfg).iter().map(|p| p.numel() as u64).sum::<u64>();
    let mut out = String::new();
    let mut line = |k: &str, v: String| out.push_str(&format!("{k:<26}{v}\n"));
    line("layers", cfg.num_hidden_layers.to_string());
    line("hidden size", cfg.hidden_size.to_string());
    line("intermediate size", cfg.intermediate_size.to_string());
    line("attention heads", format!("{} ({} KV heads, head_dim {})", cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim));
    line("vocabulary", cfg.vocab_size.to_string());
    line("sliding window", window);
    line("rope theta", cfg.rope_theta.to_string());
    line("rms norm eps", cfg.rms_norm_eps.to_string());
    line("embedding parameters", group_digits(block_params(Block::Embedding)));
    line("parameters per layer", group_digits(block_params(Block::Layer(0))));
    line("norm + lm_head parameters", group_digits(block_params(Block::Head)));
    line("total parameters", group_digits(param_count(cfg)));
    out
}
