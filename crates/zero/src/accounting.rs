//! Model-state bytes per rank for a model, a LoRA setting and a world size, computed from the
//! layouts alone (nothing is allocated) with the engine's own accounting.

use shard_checkpoint::is_quantized_linear;
use shard_model::{Block, LoraConfig, MistralConfig, ParamSpec, lora_params};

use crate::unit::part_state_bytes;
use crate::{Dtype, FlatLayout, Nf4Layout};

/// What a rank would hold between steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateFootprint {
    pub trainable_params: u64,
    /// Shards, and for trainable parts Adam m, v and grad shards, on one rank.
    pub model_state_bytes: u64,
}

/// The parts [`crate::Engine::new`] makes, and what each holds on a rank computing in `compute`;
/// with `nf4_base` (QLoRA) each decoder layer's projections as NF4 records.
pub fn state_footprint(
    cfg: &MistralConfig,
    lora: Option<&LoraConfig>,
    nf4_base: bool,
    world_size: usize,
    compute: Dtype,
) -> StateFootprint {
    let mut nf4_bytes = 0;
    let mut footprint = StateFootprint { trainable_params: 0, model_state_bytes: 0 };
    let mut add = |layout: FlatLayout, trainable: bool| {
        if trainable {
            footprint.trainable_params += layout.numel as u64;
        }
        footprint.model_state_bytes += part_state_bytes(&layout, trainable, compute) as u64;
    };
    for block in Block::all(cfg) {
        let (quantized, float): (Vec<ParamSpec>, Vec<ParamSpec>) = match block {
            Block::Layer(_) if nf4_base => block.params(cfg).into_iter().partition(|s| is_quantized_linear(&s.name)),
            _ => (Vec::new(), block.params(cfg)),
        };
        nf4_bytes += Nf4Layout::new(quantized, world_size).state_bytes() as u64;
        add(FlatLayout::new(float, world_size), lora.is_none());
        if let (Some(lora), Block::Layer(i)) = (lora, block) {
            add(FlatLayout::new(lora_params(cfg, i, lora.r, lora.targeted()), world_size), true);
        }
    }
    footprint.model_state_bytes += nf4_bytes;
    footprint
}
