//! Model-state bytes per rank for a model, a LoRA setting and a world size, computed from the
//! layouts alone (nothing is allocated) with the engine's own accounting.

use shard_model::{Block, LoraConfig, MistralConfig, lora_params};

use crate::unit::part_state_bytes;
use crate::{FlatLayout, Float};

/// What a rank would hold between steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateFootprint {
    pub trainable_params: u64,
    /// Shards, and for trainable parts Adam m, v and grad shards, on one rank.
    pub model_state_bytes: u64,
}

/// The parts [`crate::Engine::new`] makes, and what each holds on a rank computing in `compute`.
pub fn state_footprint(cfg: &MistralConfig, lora: Option<&LoraConfig>, world_size: usize, compute: Float) -> StateFootprint {
    let mut footprint = StateFootprint { trainable_params: 0, model_state_bytes: 0 };
    let mut add = |layout: FlatLayout, trainable: bool| {
        if trainable {
            footprint.trainable_params += layout.numel as u64;
        }
        footprint.model_state_bytes += part_state_bytes(&layout, trainable, compute) as u64;
    };
    for block in Block::all(cfg) {
        add(FlatLayout::new(block.params(cfg), world_size), lora.is_none());
        if let (Some(lora), Block::Layer(i)) = (lora, block) {
            add(FlatLayout::new(lora_params(cfg, i, lora.r, lora.targeted()), world_size), true);
        }
    }
    footprint
}
