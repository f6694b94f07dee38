//! Building this rank's engine from where the run says its shards come from: the base from a
//! resumed save (full fine-tuning), the model checkpoint (NF4-dequantized for QLoRA) or a random
//! init; LoRA adapters from a
//! resumed save, peft adapters (`lora.init`) or peft's init. Sources are dropped once the shards
//! are read, so no checkpoint stays mapped while training.

use anyhow::{Context, Result};
use burn::tensor::backend::AutodiffBackend;
use shard_checkpoint::{HfCheckpoint, SavedCheckpoint};
use shard_comm::Collective;
use shard_model::{MistralConfig, ParamSpec, all_params, lora_params};
use shard_zero::{Adapters, Engine, LoraInit, ParamSource, PeftAdapters, RandomInit, ShardGroups, TrainSettings};

use crate::nf4_base::Nf4Base;
use crate::run_config::{RunConfig, TrainMode};
use crate::train::TrainDevice;

pub fn build_engine<B: AutodiffBackend, C: Collective<B::InnerBackend>>(
    run: &RunConfig,
    model: &MistralConfig,
    saved: Option<&SavedCheckpoint>,
    settings: TrainSettings,
    comm: C,
    groups: ShardGroups<C>,
    device: &TrainDevice<B::Device>,
) -> Result<Engine<B, C>> {
    let lora = crate::train::lora_config(run);
    let checkpoint;
    let random;
    let nf4_base;
    let base: &dyn ParamSource = match (saved, &lora, &run.model.path) {
        (Some(saved), None, _) => saved,
        (_, _, Some(dir)) if run.train.mode == TrainMode::Qlora => {
            nf4_base = Nf4Base::open(dir, model, device.host_cpu)?;
            &nf4_base
        }
        (_, _, Some(dir)) => {
            checkpoint = HfCheckpoint::open(dir)?;
            checkpoint.check_params(&all_params(model))?;
            &checkpoint
        }
        (_, _, None) => {
            random = RandomInit { seed: run.train.seed, std: model.initializer_range };
            &random
        }
    };
    let adapter_file;
    let adapter_init;
    let adapters = match lora {
        None => None,
        Some(lora) => {
            let source: &dyn ParamSource = match (saved, &run.lora.init) {
                (Some(saved), _) => saved,
                (None, Some(path)) => {
                    adapter_file = PeftAdapters(HfCheckpoint::open_file(path)?);
                    let expected: Vec<ParamSpec> =
                        (0..model.num_hidden_layers).flat_map(|i| lora_params(model, i, lora.r, lora.targeted())).collect();
                    adapter_file.check(&expected).context("lora.init")?;
                    &adapter_file
                }
                (None, None) => {
                    adapter_init = LoraInit { seed: run.train.seed };
                    &adapter_init
                }
            };
            Some(Adapters { config: lora, source })
        }
    };
    let mut engine = Engine::<B, C>::new(model.clone(), base, adapters, comm, groups, device.handle.clone(), settings)?;
    if let Some(saved) = saved {
        engine.restore(saved)?;
    }
    Ok(engine)
}
