//! The engine's units as sizes: each block (embedding, decoder layer, head) is a list of parts,
//! each a flat vector padded to a multiple of the world size, as `shard-zero`'s `FlatLayout`
//! lays them out. Full fine-tuning: one trainable part per unit. LoRA: a frozen base part per
//! unit and, for each decoder layer, a trainable part with its adapters.

use shard_model::{Block, ParamSpec, lora_params};

use crate::{Job, Mode};

/// One flat, padded vector of a unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Part {
    /// Elements before padding.
    pub numel: u64,
    /// Elements after padding to a multiple of the world size.
    pub padded: u64,
    /// Elements each rank owns: padded / world size.
    pub shard: u64,
    pub trainable: bool,
    /// Elements stored as NF4 (the projections of a QLoRA base); the rest in the compute dtype.
    pub quantized: u64,
}

impl Part {
    fn new(specs: &[ParamSpec], world: u64, trainable: bool, quantized: u64) -> Self {
        let numel: u64 = specs.iter().map(|p| p.numel() as u64).sum();
        let padded = numel.div_ceil(world) * world;
        Self { numel, padded, shard: padded / world, trainable, quantized }
    }
}

/// One block of the model as the engine shards it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unit {
    pub block: Block,
    pub parts: Vec<Part>,
    /// Elements of its largest parameter.
    pub largest_param: u64,
}

impl Unit {
    pub fn numel(&self) -> u64 {
        self.parts.iter().map(|p| p.numel).sum()
    }

    pub fn is_trainable(&self) -> bool {
        self.parts.iter().any(|p| p.trainable)
    }

    /// Padded elements of the largest trainable part: the engine reduce-scatters the parts one
    /// after the other, so this is the most full-size gradient it holds at once.
    pub fn largest_trainable_part(&self) -> u64 {
        self.parts.iter().filter(|p| p.trainable).map(|p| p.padded).max().unwrap_or(0)
    }
}

/// Every unit in forward order (embedding, layers, head), laid out for `job.gpus` ranks.
pub fn units(job: &Job) -> Vec<Unit> {
    let cfg = &job.model;
    let world = job.gpus as u64;
    Block::all(cfg)
        .into_iter()
        .map(|block| {
            let specs = block.params(cfg);
            let largest_param = specs.iter().map(|p| p.numel() as u64).max().unwrap_or(0);
            let parts = match (&job.mode, block) {
                (Mode::Full, _) => vec![Part::new(&specs, world, true, 0)],
                (Mode::Lora(_) | Mode::Qlora(_), Block::Embedding | Block::Head) => vec![Part::new(&specs, world, false, 0)],
                (Mode::Lora(lora) | Mode::Qlora(lora), Block::Layer(i)) => {
                    // QLoRA stores the seven projections in NF4; the two norms stay in bf16.
                    let quantized = match job.mode {
                        Mode::Qlora(_) => specs.iter().filter(|p| p.shape.len() == 2).map(|p| p.numel() as u64).sum(),
                        _ => 0,
                    };
                    let adapters = lora_params(cfg, i, lora.r, lora.targeted());
                    vec![Part::new(&specs, world, false, quantized), Part::new(&adapters, world, true, 0)]
                }
            };
            Unit { block, parts, largest_param }
        })
        .collect()
}
