//! A unit: one block of the model (embedding, a decoder layer, the head) as this rank holds it,
//! in parts. Full fine-tuning has one trainable part per unit; with LoRA a decoder layer has a
//! frozen part (its base weights) and a trainable part (its adapters), and the embedding and
//! head have a frozen part only. Each part is a flat vector padded to the world size, held as a
//! tensor on the rank's device. With QLoRA a decoder layer's projections are an NF4 part
//! besides (see `nf4_part`), and its frozen float part holds the norms only.

use burn::tensor::{DType, Tensor, TensorData, backend::Backend};
use shard_model::{Block, ParamSpec, Weights};

use crate::{Dtype, FlatLayout, Nf4Part};

/// Adam moments and the gradient accumulator of a trained shard, f32 on the device.
#[derive(Debug, Clone)]
pub struct OptimState<B: Backend> {
    pub m: Tensor<B, 1>,
    pub v: Tensor<B, 1>,
    /// Summed over the micro-batches of a step, zeroed after the update.
    pub grad: Tensor<B, 1>,
}

impl<B: Backend> OptimState<B> {
    pub fn zeros(len: usize, device: &B::Device) -> Self {
        let zeros = || Tensor::zeros([len], (device, DType::F32));
        Self { m: zeros(), v: zeros(), grad: zeros() }
    }
}

/// Bytes of model state a rank holds for a part laid out as `layout`: a trained part's f32
/// master, Adam m and v and f32 gradient shard (16 bytes per element, FSDP2's mixed precision:
/// no persistent low-precision copy); a frozen part's shard in the compute dtype.
pub fn part_state_bytes(layout: &FlatLayout, trainable: bool, compute: Dtype) -> usize {
    layout.shard_len() * if trainable { 16 } else { compute.bytes() }
}

/// Parameters sharded together, trained or frozen together.
pub struct Part<B: Backend> {
    /// `base` (the model's parameters) or `adapters` (LoRA's).
    pub name: &'static str,
    pub layout: FlatLayout,
    /// This rank's slice of the flat parameters: the f32 master of a trained part (what AdamW
    /// updates), a frozen part's values in the compute dtype.
    pub shard: Tensor<B, 1>,
    /// Present when the part is trained.
    pub optim: Option<OptimState<B>>,
    /// The dtype the part is all-gathered and computed in.
    pub compute: Dtype,
}

impl<B: Backend> Part<B> {
    /// A part from this rank's f32 values.
    pub fn new(name: &'static str, layout: FlatLayout, values: Vec<f32>, trainable: bool, compute: Dtype, device: &B::Device) -> Self {
        assert_eq!(values.len(), layout.shard_len());
        let len = values.len();
        let f32_shard = Tensor::<B, 1>::from_data(TensorData::new(values, [len]), (device, DType::F32));
        let (shard, optim) =
            if trainable { (f32_shard, Some(OptimState::zeros(len, device))) } else { (f32_shard.cast(compute.dtype()), None) };
        Self { name, layout, shard, optim, compute }
    }

    pub fn is_trainable(&self) -> bool {
        self.optim.is_some()
    }

    /// What this rank contributes to the part's all-gather: its shard in the compute dtype.
    pub fn gather_input(&self) -> Tensor<B, 1> {
        self.shard.clone().cast(self.compute.dtype())
    }

    /// Bytes of model state this rank holds: see [`part_state_bytes`].
    pub fn state_bytes(&self) -> usize {
        part_state_bytes(&self.layout, self.is_trainable(), self.compute)
    }

    /// Bytes of the part gathered to full size in the compute dtype (padding included).
    pub fn gathered_bytes(&self) -> usize {
        self.layout.padded() * self.compute.bytes()
    }

    /// Splits a gathered flat tensor (padded length) into named parameters, added to `weights`.
    pub fn split_into<T: Backend>(&self, full: Tensor<T, 1>, weights: &mut Weights<T>) {
        for (spec, offset) in &self.layout.params {
            weights.insert(spec.name.clone(), full.clone().narrow(0, *offset, spec.numel()));
        }
    }
}

pub struct Unit<B: Backend> {
    pub block: Block,
    /// The base part, then the adapters when they are trained ([`Unit::base`], [`Unit::adapters`]).
    pub parts: Vec<Part<B>>,
    /// A QLoRA decoder layer's projections, in NF4.
    pub nf4: Option<Nf4Part<B>>,
}

impl<B: Backend> Unit<B> {
    /// The part every unit has, in the compute dtype (shard_model's `BlockParts::base`).
    pub fn base(&self) -> &Part<B> {
        &self.parts[0]
    }

    /// A decoder layer's LoRA adapters, when adapters are trained.
    pub fn adapters(&self) -> Option<&Part<B>> {
        self.parts.get(1)
    }

    pub fn is_trainable(&self) -> bool {
        self.parts.iter().any(Part::is_trainable)
    }

    pub fn state_bytes(&self) -> usize {
        self.parts.iter().map(Part::state_bytes).sum::<usize>() + self.nf4.as_ref().map_or(0, |n| n.layout.state_bytes())
    }

    /// Bytes the unit's gather brings: its parts in the compute dtype, its NF4 records.
    pub fn gathered_bytes(&self) -> usize {
        self.parts.iter().map(Part::gathered_bytes).sum::<usize>() + self.nf4.as_ref().map_or(0, |n| n.layout.gathered_bytes())
    }

    /// Bytes of the gathered unit once its NF4 records are dequantized (and released).
    pub fn dequantized_bytes(&self, compute: Dtype) -> usize {
        self.parts.iter().map(Part::gathered_bytes).sum::<usize>() + self.nf4.as_ref().map_or(0, |n| n.layout.dequantized_bytes(compute))
    }

    /// The base's parameters in HF order with their offsets in the flat vector an export of
    /// the base holds: the NF4 projections (dequantized) first, then the float base part.
    pub fn base_params(&self) -> Vec<(ParamSpec, usize)> {
        let quantized = self.nf4.as_ref().map_or(&[][..], |n| n.layout.params.as_slice());
        let mut offset = 0;
        let mut params = Vec::new();
        for spec in quantized.iter().map(|(s, _)| s).chain(self.base().layout.params.iter().map(|(s, _)| s)) {
            params.push((spec.clone(), offset));
            offset += spec.numel();
        }
        params
    }
}
