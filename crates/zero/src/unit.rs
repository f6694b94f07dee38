//! A unit: one block of the model (embedding, a decoder layer, the head) as this rank holds it.

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

    pub fn bytes(&self) -> usize {
        (self.m.len() + self.v.len() + self.grad.len()) * 4
    }
}

pub struct Unit {
    pub block: Block,
    pub layout: FlatLayout,
    /// This rank's slice of the flat parameters in f32, on the host: what AdamW updates and
    /// what is all-gathered (f32 compute). Host-side so that the optimizer runs in place; a
    /// device-resident shard with a device optimizer is the GPU's next step.
    pub shard: Vec<f32>,
    /// Present when the unit is trained.
    pub optim: Option<OptimState>,
}

impl Unit {
    pub fn new(block: Block, layout: FlatLayout, shard: Vec<f32>, trainable: bool) -> Self {
        assert_eq!(shard.len(), layout.shard_len());
        let optim = trainable.then(|| OptimState::zeros(shard.len()));
        Self { block, layout, shard, optim }
    }

    /// A copy of the shard as a tensor, to hand to a collective.
    pub fn shard_tensor<B: Backend>(&self, device: &B::Device) -> Tensor<B, 1> {
        Tensor::from_data(TensorData::new(self.shard.clone(), [self.shard.len()]), device)
    }

    /// Bytes of model state this rank holds for the unit: the compute shard, and for trainable
    /// units Adam m, v and the gradient shard.
    pub fn state_bytes(&self) -> usize {
        self.layout.shard_len() * 4 + self.optim.as_ref().map_or(0, OptimState::bytes)
    }

    /// Bytes of the unit gathered to full size (padding included).
    pub fn gathered_bytes(&self) -> usize {
        self.layout.padded() * 4
    }

    /// Splits a gathered flat tensor (padded length) into named parameters.
    pub fn split<B: Backend>(&self, full: Tensor<B, 1>) -> Weights<B> {
        let mut weights = Weights::default();
        for (spec, offset) in &self.layout.params {
            weights.insert(spec.name.clone(), full.clone().narrow(0, *offset, spec.numel()));
        }
        weights
    }
}
