//! `shard-train train --config FILE.toml`: for now one process, the forward and backward of the
//! configured model on the first micro-batch, printing the loss.

use std::path::PathBuf;

use anyhow::{Context, Result};
use burn::backend::{Autodiff, NdArray};
use burn::tensor::{Int, Tensor, TensorData};
use shard_checkpoint::{HfCheckpoint, load_weights};
use shard_data::{Batch, Dataset, Example, prepare_cache};
use shard_model::{Mistral, MistralConfig, cross_entropy_sum};

use crate::run_config::RunConfig;

#[derive(clap::Args)]
pub struct TrainArgs {
    /// The run config (TOML).
    #[arg(long)]
    config: PathBuf,
}

type Backend = Autodiff<NdArray<f32>>;

pub fn run(args: TrainArgs) -> Result<()> {
    let run = RunConfig::load(&args.config)?;
    let dir = run.model.path.clone().context("this version trains from a checkpoint (model.path)")?;
    let cfg = MistralConfig::from_file(&dir.join("config.json"))?;
    let spec = run.data_spec(&cfg);
    let prepared = prepare_cache(&spec, &run.data_cache_dir())?;
    eprintln!("data: {} ({})", prepared.stats, if prepared.built { "tokenized" } else { "cached" });
    let data = Dataset::open(&spec, &run.data_cache_dir())?;
    let device = Default::default();
    let weights = load_weights::<Backend>(&HfCheckpoint::open(&dir)?, &cfg, &device)?;
    let model = Mistral::from_weights(&cfg, weights)?;

    let examples: Vec<Example> = (0..run.train.micro_batch_size.min(data.len())).map(|i| data.get(i)).collect();
    let batch = Batch::from_examples(&examples.iter().collect::<Vec<_>>(), cfg.eos_token_id.unwrap_or(0));
    let ids = Tensor::<Backend, 2, Int>::from_data(TensorData::new(batch.input_ids.clone(), [batch.rows, batch.seq]), &device);
    let loss = cross_entropy_sum(model.forward(ids), &batch.labels).div_scalar(batch.target_tokens().max(1) as f64);
    let _grads = loss.backward();
    println!("loss {:.6} on {} examples ({} target tokens)", loss.into_scalar(), batch.rows, batch.target_tokens());
    Ok(())
}
