//! The engine's units as sizes: each block (embedding, decoder layer, head) is a list of parts,
//! each a flat vector padded to a multiple of the world size, as `shard-zero`'s `FlatLayout`
//! lays them out. Full fine-tuning: one trainable part per unit. LoRA: a frozen base part per
//! unit and, for each decoder layer, a trainable part with its adapters. QLoRA: as LoRA, with a
//! decoder layer's projections in an NF4 part of whole records (`shard-zero`'s `Nf4Layout`).

use shard_model::{Block, ParamSpec};
use shard_nf4::{RECORD_BYTES, RECORD_WEIGHTS, records_of};

use crate::{Job, Mode};

/// One flat, padded vector of a unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Part {
    /// Elements before padding.
    pub numel: u64,
    /// Elements after padding to a multiple of the world size (an NF4 part: whole records of
    /// 16,384 weights, their number a multiple of the world size).
    pub padded: u64,
    /// Elements each rank owns: padded / world size.
    pub shard: u64,
    pub trainable: bool,
    /// Held and gathered as NF4 records (a QLoRA layer's projections), dequantized after the gather.
    pub nf4: bool,
}

impl Part {
    fn new(specs: &[ParamSpec], world: u64, trainable: bool) -> Self {
        let numel: u64 = specs.iter().map(|p| p.numel() as u64).sum();
        let padded = numel.div_ceil(world) * world;
        Self { numel, padded, shard: padded / world, trainable, nf4: false }
    }

    /// Each weight in whole records, the records padded to a multiple of the world size.
    fn nf4(specs: &[ParamSpec], world: u64) -> Self {
        let numel: u64 = specs.iter().map(|p| p.numel() as u64).sum();
        let records: u64 = specs.iter().map(|p| records_of(p.numel()) as u64).sum();
        let padded = records.div_ceil(world) * world * RECORD_WEIGHTS as u64;
        Self { numel, padded, shard: padded / world, trainable: false, nf4: true }
    }

    /// Bytes of `elems` of the part's (padded) elements as held and gathered: whole NF4 records,
    /// or `elem` bytes each.
    pub fn bytes(&self, elems: u64, elem: u64) -> u64 {
        if self.nf4 { elems / RECORD_WEIGHTS as u64 * RECORD_BYTES as u64 } else { elems * elem }
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
            let (lora, nf4_base) = match &job.mode {
                Mode::Full => (None, false),
                Mode::Lora(lora) => (Some(lora), false),
                Mode::Qlora(lora) => (Some(lora), true),
            };
            let split = block.parts(cfg, lora, nf4_base);
            let mut parts = vec![Part::new(&split.base, world, split.base_trained)];
            parts.extend(split.adapters.map(|adapters| Part::new(&adapters, world, true)));
            if !split.quantized.is_empty() {
                parts.push(Part::nf4(&split.quantized, world));
            }
            Unit { block, parts, largest_param }
        })
        .collect()
}
