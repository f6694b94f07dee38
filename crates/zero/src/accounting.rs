//! Model-state bytes per rank for a model, a LoRA setting and a world size, computed from the
//! layouts alone (nothing is allocated) with the engine's own accounting.

use shard_model::{Block, LoraConfig, MistralConfig};

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
        let parts = block.parts(cfg, lora, nf4_base);
        nf4_bytes += Nf4Layout::new(parts.quantized, world_size).state_bytes() as u64;
        add(FlatLayout::new(parts.base, world_size), parts.base_trained);
        if let Some(adapters) = parts.adapters {
            add(FlatLayout::new(adapters, world_size), true);
        }
    }
    footprint.model_state_bytes += nf4_bytes;
    footprint
}
