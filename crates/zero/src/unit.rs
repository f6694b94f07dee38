//! A unit: one block of the model (embedding, a decoder layer, the head) as this rank holds it,
//! in parts. Full fine-tuning has one trainable part per unit; with LoRA a decoder layer has a
//! frozen part (its base weights) and a trainable part (its adapters), and the embedding and
//! head have a frozen part only. Each part is a flat vector padded to the world size.

use burn::tensor::{Tensor, TensorData, backend::Backend};
use shard_model::{Block, Weights};

use crate::FlatLayout;

/// Adam moments and the gradient accumulator of a trainable shard, on the host in f32.
#[derive(Debug, Clone)]
pub struct OptimState {
    pub m: Vec<f32>,
    pub v: Vec<f32>,
    /// Summed over the micro-batches of a step, zeroed after the update.
    pub grad: Vec<f32>,
}

impl OptimState {
    pub fn zeros(len: usize) -> Self {
        Self { m: vec![0.0; len], v: vec![0.0; len], grad: vec![0.0; len] }
    }

}

/// Bytes of model state a rank holds for a part laid out as `layout`: its f32 shard, and when
/// the part is trained, Adam m and v and the f32 gradient shard (16 bytes per element).
pub fn part_state_bytes(layout: &FlatLayout, trainable: bool) -> usize {
    layout.shard_len() * 4 * if trainable { 4 } else { 1 }
}

/// Parameters sharded together, trained or frozen together.
pub struct Part {
    /// `base` (the model's parameters) or `adapters` (LoRA's).
    pub name: &'static str,
    pub layout: FlatLayout,
    /// This rank's slice of the flat parameters in f32, on the host: what AdamW updates and
    /// what is all-gathered (f32 compute). Host-side so that the optimizer runs in place; a
    /// device-resident shard with a device optimizer is the GPU's next step.
    pub shard: Vec<f32>,
    /// Present when the part is trained.
    pub optim: Option<OptimState>,
}

impl Part {
    pub fn new(name: &'static str, layout: FlatLayout, shard: Vec<f32>, trainable: bool) -> Self {
        assert_eq!(shard.len(), layout.shard_len());
        let optim = trainable.then(|| OptimState::zeros(shard.len()));
        Self { name, layout, shard, optim }
    }

    pub fn is_trainable(&self) -> bool {
        self.optim.is_some()
    }

    /// A copy of the shard as a tensor, to hand to a collective.
    pub fn shard_tensor<B: Backend>(&self, device: &B::Device) -> Tensor<B, 1> {
        Tensor::from_data(TensorData::new(self.shard.clone(), [self.shard.len()]), device)
    }

    /// Bytes of model state this rank holds: see [`part_state_bytes`].
    pub fn state_bytes(&self) -> usize {
        part_state_bytes(&self.layout, self.is_trainable())
    }

    /// Bytes of the part gathered to full size (padding included).
    pub fn gathered_bytes(&self) -> usize {
        self.layout.padded() * 4
    }

    /// Splits a gathered flat tensor (padded length) into named parameters, added to `weights`.
    pub fn split_into<B: Backend>(&self, full: Tensor<B, 1>, weights: &mut Weights<B>) {
        for (spec, offset) in &self.layout.params {
            weights.insert(spec.name.clone(), full.clone().narrow(0, *offset, spec.numel()));
        }
    }
}

pub struct Unit {
    pub block: Block,
    pub parts: Vec<Part>,
}

impl Unit {
    pub fn is_trainable(&self) -> bool {
        self.parts.iter().any(Part::is_trainable)
    }

    pub fn state_bytes(&self) -> usize {
        self.parts.iter().map(Part::state_bytes).sum()
    }

    pub fn gathered_bytes(&self) -> usize {
        self.parts.iter().map(Part::gathered_bytes).sum()
    }
}
