//! Building this rank's engine from where the run says its shards come from: the base from a
//! resumed save (full fine-tuning), the model checkpoint (NF4-dequantized for QLoRA) or a random
//! init; LoRA adapters from a
//! resumed save, peft adapters (`lora.init`) or peft's init. Sources are dropped once the shards
//! are read, so no checkpoint stays mapped while training.

use anyhow::{Context, Result};
use burn::tensor::backend::AutodiffBackend;
use shard_checkpoint::{HfCheckpoint, SavedCheckpoint};
use shard_comm::Collective;
use shard_model::{LoraConfig, MistralConfig, ParamSpec, all_params, lora_params};
use shard_zero::{Adapters, Engine, LoraInit, ParamSource, PeftAdapters, RandomInit, ShardGroups, TrainSettings};

use crate::config::run_config::{RunConfig, TrainMode};
use crate::job::job_end::agree;
use crate::run::nf4_base::Nf4Base;
use crate::run::train::TrainDevice;

pub fn build_engine<B: AutodiffBackend, C: Collective<B::InnerBackend>>(
    run: &RunConfig,
    model: &MistralConfig,
    saved: Option<&SavedCheckpoint>,
    settings: TrainSettings,
    comm: C,
    groups: ShardGroups<C>,
    device: &TrainDevice<B::Device>,
) -> Result<Engine<B, C>> {
    // A missing or misshapen model file fails every rank alike: agreed here, before any rank
    // starts the engine's collectives, it is reported once.
    let base = agree(&comm, Base::open(run, model, saved, device.host_cpu));
    let lora = crate::run::settings::lora_config(run);
    let adapters = agree(&comm, lora.as_ref().map(|lora| AdapterSource::open(run, model, lora, saved)).transpose());
    let (base, adapters) = (base?, adapters?);
    let adapters = lora.zip(adapters.as_ref()).map(|(config, source)| Adapters { config, source: source.source() });
    let mut engine = Engine::<B, C>::new(model.clone(), base.source(), adapters, comm, groups, device.handle.clone(), settings)?;
    if let Some(saved) = saved {
        engine.restore(saved)?;
    }
    Ok(engine)
}

/// Where the base parameters come from.
enum Base<'a> {
    /// Full fine-tuning resumed from a save.
    Saved(&'a SavedCheckpoint),
    Nf4(Nf4Base),
    Checkpoint(HfCheckpoint),
    Random(RandomInit),
}

impl<'a> Base<'a> {
    fn open(run: &RunConfig, model: &MistralConfig, saved: Option<&'a SavedCheckpoint>, host_cpu: bool) -> Result<Self> {
        let trains_adapters = run.train.mode.trains_adapters();
        Ok(match (saved, &run.model.path) {
            (Some(saved), _) if !trains_adapters => Base::Saved(saved),
            (_, Some(dir)) if run.train.mode == TrainMode::Qlora => Base::Nf4(Nf4Base::open(dir, model, host_cpu)?),
            (_, Some(dir)) => {
                let checkpoint = HfCheckpoint::open(dir)?;
                checkpoint.check_params(&all_params(model))?;
                Base::Checkpoint(checkpoint)
            }
            (_, None) => Base::Random(RandomInit { seed: run.train.seed, std: model.initializer_range }),
        })
    }

    fn source(&self) -> &dyn ParamSource {
        match self {
            Base::Saved(saved) => *saved,
            Base::Nf4(nf4) => nf4,
            Base::Checkpoint(checkpoint) => checkpoint,
            Base::Random(random) => random,
        }
    }
}

/// Where the LoRA adapters come from.
enum AdapterSource<'a> {
    Saved(&'a SavedCheckpoint),
    /// `lora.init`.
    Peft(PeftAdapters),
    Init(LoraInit),
}

impl<'a> AdapterSource<'a> {
    fn open(run: &RunConfig, model: &MistralConfig, lora: &LoraConfig, saved: Option<&'a SavedCheckpoint>) -> Result<Self> {
        Ok(match (saved, &run.lora.init) {
            (Some(saved), _) => AdapterSource::Saved(saved),
            (None, Some(path)) => {
                let adapters = PeftAdapters(HfCheckpoint::open_file(path)?);
                let expected: Vec<ParamSpec> =
                    (0..model.num_hidden_layers).flat_map(|i| lora_params(model, i, lora.r, lora.targeted())).collect();
                adapters.check(&expected).context("lora.init")?;
                AdapterSource::Peft(adapters)
            }
            (None, None) => AdapterSource::Init(LoraInit { seed: run.train.seed }),
        })
    }

    fn source(&self) -> &dyn ParamSource {
        match self {
            AdapterSource::Saved(saved) => *saved,
            AdapterSource::Peft(peft) => peft,
            AdapterSource::Init(init) => init,
        }
    }
}
