//! Saving and restoring the trainable state of an engine: this rank's shards of the parameters
//! and Adam moments of every trainable part, the step counters, and the flat layout that lets a
//! run at another world size find its elements in the saved rank files.

use std::ops::Range;

use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{DType, Tensor, TensorData};
use shard_checkpoint::{CheckpointError, DiskDtype, ParamState, PartState, SavedCheckpoint, ShardKind, UnitState, shard_name};
use shard_comm::Collective;
use shard_model::{Block, ParamSpec};

use crate::{Engine, EngineError, FlatLayout, ParamSource, Slots};

/// A saved checkpoint as the source of the parameters of the parts it holds (the trainable ones).
impl ParamSource for SavedCheckpoint {
    fn read(&self, spec: &ParamSpec, start: usize, len: usize, out: &mut Vec<f32>) -> Result<(), CheckpointError> {
        let (unit, part, offset) = self
            .find_param(&spec.name)
            .ok_or_else(|| CheckpointError::MissingTensor { origin: self.dir().to_owned(), name: spec.name.clone() })?;
        self.read_flat(unit, part, ShardKind::Param, offset + start..offset + start + len, out)
    }
}

/// The name a save gives a QLoRA layer's NF4 projections (listed after its parts, so that the
/// parts keep their indices).
pub const NF4_PART: &str = "nf4";

fn block_name(block: Block) -> String {
    match block {
        Block::Embedding => "embedding".into(),
        Block::Layer(i) => format!("layer.{i}"),
        Block::Head => "head".into(),
    }
}

impl<B: AutodiffBackend, C: Collective<B::InnerBackend>> Engine<B, C> {
    /// The layout of every unit, as a save records it.
    pub fn unit_states(&self) -> Vec<UnitState> {
        self.units
            .iter()
            .map(|unit| {
                let params = |params: &[(ParamSpec, usize)]| {
                    params
                        .iter()
                        .map(|(spec, offset)| ParamState { name: spec.name.clone(), shape: spec.shape.clone(), offset: *offset })
                        .collect()
                };
                // A QLoRA layer's projections, listed with offsets as if flat and unpadded: a save
                // holds none of them, an export reads them from the model.
                let nf4 = unit.nf4.as_ref().map(|nf4| {
                    let flat = unit.base_params();
                    PartState {
                        name: NF4_PART.into(),
                        trainable: false,
                        numel: nf4.layout.numel(),
                        padded: nf4.layout.numel(),
                        params: params(&flat[..nf4.layout.params.len()]),
                    }
                });
                let parts = unit.parts.iter().map(|part| PartState {
                    name: part.name.into(),
                    trainable: part.is_trainable(),
                    numel: part.layout.numel,
                    padded: part.layout.padded(),
                    params: params(&part.layout.params),
                });
                UnitState { block: block_name(unit.block), parts: parts.chain(nf4).collect() }
            })
            .collect()
    }

    /// This rank's shards to save, by name: parameters, Adam m and v of every trainable part
    /// (with AdamW8bit, the codes of m and v in U8 and their scales). Each is read to the host
    /// only when asked ([`SavedShard::values`]), so that a save streams the state one shard at a time.
    pub fn checkpoint_shards(&self) -> Vec<SavedShard<'_, B::InnerBackend>> {
        let mut shards = Vec::new();
        for (u, unit) in self.units.iter().enumerate() {
            for part in &unit.parts {
                let Some(optim) = &part.optim else { continue };
                let mut add = |kind, dtype, source| shards.push(SavedShard { name: shard_name(u, part.name, kind), dtype, source });
                // The same files with an offloaded optimizer (its states read from the host): a
                // save resumes with or without offload.
                match &optim.host {
                    None => add(ShardKind::Param, DiskDtype::F32, Source::Device(part.shard.clone())),
                    Some(host) => add(ShardKind::Param, DiskDtype::F32, Source::Host(&host.master)),
                }
                match (&optim.blockwise8, &optim.host) {
                    (None, None) => {
                        add(ShardKind::ExpAvg, DiskDtype::F32, Source::Device(optim.m.clone()));
                        add(ShardKind::ExpAvgSq, DiskDtype::F32, Source::Device(optim.v.clone()));
                    }
                    (None, Some(host)) => {
                        add(ShardKind::ExpAvg, DiskDtype::F32, Source::Host(&host.m));
                        add(ShardKind::ExpAvgSq, DiskDtype::F32, Source::Host(&host.v));
                    }
                    (Some(states), _) => {
                        add(ShardKind::ExpAvg, DiskDtype::U8, Source::Codes(&states.m_codes));
                        add(ShardKind::ExpAvgSq, DiskDtype::U8, Source::Codes(&states.v_codes));
                        add(ShardKind::ExpAvgScale, DiskDtype::F32, Source::Host(&states.m_scales));
                        add(ShardKind::ExpAvgSqScale, DiskDtype::F32, Source::Host(&states.v_scales));
                    }
                }
            }
        }
        shards
    }

    /// Micro-batches this rank has trained on (the counter LoRA dropout masks come from).
    pub fn micro_batches_done(&self) -> u64 {
        self.micro_batches_done
    }

    /// Continues from `saved`: checks that it was made for the same units, parts and parameters,
    /// then loads this rank's slice of the Adam moments (the parameters come in through
    /// [`Engine::new`] with `saved` as their source) and the step counters. A save holds the same
    /// files with or without an offloaded optimizer: either resumes the other.
    pub fn restore(&mut self, saved: &SavedCheckpoint) -> Result<(), EngineError> {
        let ours = self.unit_states();
        let theirs = &saved.state().units;
        let mismatch = |why: String| EngineError::Checkpoint(CheckpointError::Corrupt { path: saved.dir().to_owned(), why });
        if ours.len() != theirs.len() {
            return Err(mismatch(format!("it has {} units, this model {}", theirs.len(), ours.len())));
        }
        for (mine, saved_unit) in ours.iter().zip(theirs) {
            let describe =
                |u: &UnitState| u.parts.iter().map(|p| (p.name.clone(), p.trainable, p.numel, p.params.clone())).collect::<Vec<_>>();
            if mine.block != saved_unit.block || describe(mine) != describe(saved_unit) {
                return Err(mismatch(format!(
                    "unit {} was saved with other parameters or another training mode than this run's (another model, or LoRA settings?)",
                    mine.block
                )));
            }
        }
        let rank = self.groups.group.world().rank;
        for (u, unit) in self.units.iter_mut().enumerate() {
            for (p, part) in unit.parts.iter_mut().enumerate() {
                let range = part.layout.shard_range(rank);
                let Some(optim) = part.optim.as_mut() else { continue };
                let within = range.start.min(part.layout.numel)..range.end.min(part.layout.numel);
                let read = |kind| -> Result<Vec<f32>, CheckpointError> {
                    let mut values = Vec::with_capacity(range.len());
                    saved.read_flat(u, p, kind, within.clone(), &mut values)?;
                    values.resize(range.len(), 0.0);
                    Ok(values)
                };
                match (optim.blockwise8.as_mut(), optim.host.as_mut()) {
                    (None, Some(host)) => {
                        host.m = read(ShardKind::ExpAvg)?;
                        host.v = read(ShardKind::ExpAvgSq)?;
                    }
                    (None, None) => {
                        optim.m = Tensor::from_data(TensorData::new(read(ShardKind::ExpAvg)?, [range.len()]), (&self.device, DType::F32));
                        optim.v = Tensor::from_data(TensorData::new(read(ShardKind::ExpAvgSq)?, [range.len()]), (&self.device, DType::F32));
                    }
                    (Some(states), _) => {
                        let codes = |values: Vec<f32>| values.into_iter().map(|c| c as u8).collect();
                        states.m_codes = codes(read(ShardKind::ExpAvg)?);
                        states.v_codes = codes(read(ShardKind::ExpAvgSq)?);
                        let saved_layout = saved_layout(&saved.state().units[u].parts[p], saved.state().world_size);
                        states.m_scales = read_scales(saved, u, p, ShardKind::ExpAvgScale, &saved_layout, states.slots.clone())?;
                        states.v_scales = read_scales(saved, u, p, ShardKind::ExpAvgSqScale, &saved_layout, states.slots.clone())?;
                    }
                }
            }
        }
        self.steps_done = saved.state().step;
        self.micro_batches_done = saved.state().micro_batches_done;
        Ok(())
    }
}

/// The flat layout a part was saved with, at the save's world size.
fn saved_layout(part: &PartState, world_size: usize) -> FlatLayout {
    FlatLayout::new(part.params.iter().map(|p| ParamSpec { name: p.name.clone(), shape: p.shape.clone() }).collect(), world_size)
}

/// AdamW8bit's scales of the slots `wanted`, from the ranks of a save (laid out as `saved`) that
/// hold them: each saved rank holds the slots its shard touched, neighbours sharing a cut block's.
fn read_scales(
    saved: &SavedCheckpoint,
    unit: usize,
    part: usize,
    kind: ShardKind,
    layout: &FlatLayout,
    wanted: Range<usize>,
) -> Result<Vec<f32>, CheckpointError> {
    let slots = Slots::new(layout);
    let mut out = Vec::with_capacity(wanted.len());
    let mut at = wanted.start;
    for rank in 0..layout.world_size {
        let held = slots.touched(layout, layout.shard_range(rank));
        if at < wanted.end && held.contains(&at) {
            let end = wanted.end.min(held.end);
            saved.read_rank(rank, unit, part, kind, at - held.start..end - held.start, &mut out)?;
            at = end;
        }
    }
    Ok(out)
}

/// One shard of a save: on the device, or AdamW8bit's states on the host.
pub struct SavedShard<'a, B: Backend> {
    pub name: String,
    /// How the file stores it.
    pub dtype: DiskDtype,
    source: Source<'a, B>,
}

enum Source<'a, B: Backend> {
    Device(Tensor<B, 1>),
    Host(&'a [f32]),
    Codes(&'a [u8]),
}

impl<B: Backend> SavedShard<'_, B> {
    pub fn len(&self) -> usize {
        match &self.source {
            Source::Device(tensor) => tensor.dims()[0],
            Source::Host(values) => values.len(),
            Source::Codes(codes) => codes.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The values, copied to the host (codes as the f32 of their value, which U8 stores exactly).
    pub fn values(&self) -> Vec<f32> {
        match &self.source {
            Source::Device(tensor) => tensor.to_data().into_vec::<f32>().expect("saved shards are f32"),
            Source::Host(values) => values.to_vec(),
            Source::Codes(codes) => codes.iter().map(|c| f32::from(*c)).collect(),
        }
    }
}
