//! A unit: one block of the model (embedding, a decoder layer, the head) as this rank holds it,
//! in parts. Full fine-tuning has one trainable part per unit; with LoRA a decoder layer has a
//! frozen part (its base weights) and a trainable part (its adapters), and the embedding and
//! head have a frozen part only. Each part is a flat vector padded to the world size, held as a
//! tensor on the rank's device. With QLoRA a decoder layer's projections are an NF4 part
//! besides (see `nf4_part`), and its frozen float part holds the norms only. With an offloaded
//! optimizer (`runtime.offload = "optimizer"`) a trained part's f32 master, gradient and Adam
//! moments are in host memory ([`HostStates`]) and its device shard is the compute-dtype copy.

use burn::tensor::{DType, Tensor, TensorData, backend::Backend};
use shard_model::{Block, ParamSpec, Weights};

use crate::{Blockwise8State, Dtype, FlatLayout, Nf4Part, OptimizerKind};

/// Adam moments and the gradient accumulator of a trained shard, f32 on the device.
#[derive(Debug, Clone)]
pub struct OptimState<B: Backend> {
    /// Empty with `blockwise8` or `host`.
    pub m: Tensor<B, 1>,
    pub v: Tensor<B, 1>,
    /// Summed over the micro-batches of a step, zeroed after the update. Empty with `host`.
    pub grad: Tensor<B, 1>,
    /// AdamW8bit's states (`train.optimizer = "adamw8bit"`), in host memory, in place of `m` and `v`.
    pub blockwise8: Option<Blockwise8State>,
    /// With an offloaded optimizer: the master, the gradient and f32 m and v, in host memory.
    pub host: Option<HostStates>,
}

impl<B: Backend> OptimState<B> {
    pub fn zeros(len: usize, device: &B::Device) -> Self {
        let zeros = || Tensor::zeros([len], (device, DType::F32));
        Self { m: zeros(), v: zeros(), grad: zeros(), blockwise8: None, host: None }
    }

    /// AdamW8bit's zero states for rank `rank`'s shard of `layout`.
    pub fn blockwise8(layout: &FlatLayout, rank: usize, device: &B::Device) -> Self {
        let empty = || Tensor::zeros([0], (device, DType::F32));
        let grad = Tensor::zeros([layout.shard_len()], (device, DType::F32));
        Self { m: empty(), v: empty(), grad, blockwise8: Some(Blockwise8State::zeros(layout, rank)), host: None }
    }

    /// Offloaded states for `master`, rank `rank`'s shard of `layout`: nothing on the device.
    fn offloaded(master: Vec<f32>, layout: &FlatLayout, rank: usize, kind: OptimizerKind, device: &B::Device) -> Self {
        let empty = || Tensor::zeros([0], (device, DType::F32));
        let blockwise8 = (kind == OptimizerKind::AdamW8bit).then(|| Blockwise8State::zeros(layout, rank));
        let moments = if blockwise8.is_some() { Vec::new() } else { vec![0.0; master.len()] };
        let host = HostStates { grad: vec![0.0; master.len()], master, m: moments.clone(), v: moments };
        Self { m: empty(), v: empty(), grad: empty(), blockwise8, host: Some(host) }
    }

    /// Drops the step's gradient: zeroes the accumulator, wherever it is.
    pub fn zero_grad(&mut self) {
        match self.host.as_mut() {
            Some(host) => host.grad.fill(0.0),
            None => self.grad = self.grad.zeros_like(),
        }
    }
}

/// A trained part's states in host memory (`runtime.offload = "optimizer"`): what AdamW reads and
/// writes, on the host's cores; the device keeps the part in the compute dtype only.
#[derive(Debug, Clone)]
pub struct HostStates {
    /// The f32 master shard.
    pub master: Vec<f32>,
    /// The f32 gradient shard: each reduce-scattered slice is added here, as it arrives.
    pub grad: Vec<f32>,
    /// Adam's f32 m and v; empty with AdamW8bit (its states are [`OptimState::blockwise8`]).
    pub m: Vec<f32>,
    pub v: Vec<f32>,
}

impl HostStates {
    /// Adds a reduce-scattered gradient slice (f32, this shard's length).
    pub fn add_grad(&mut self, slice: &[f32]) {
        assert_eq!(slice.len(), self.grad.len(), "a gradient slice of the shard's length");
        self.grad.iter_mut().zip(slice).for_each(|(g, s)| *g += s);
    }

    /// Bytes in host memory: master and gradient, and m and v (or AdamW8bit's states, counted by
    /// their owner).
    fn bytes(&self) -> usize {
        4 * (self.master.len() + self.grad.len() + self.m.len() + self.v.len())
    }
}

/// `values` (f32, in host memory) on `device`, in f32.
pub fn to_device<B: Backend>(values: &[f32], device: &B::Device) -> Tensor<B, 1> {
    Tensor::from_data(TensorData::new(values.to_vec(), [values.len()]), (device, DType::F32))
}

/// An offloaded part's device shard: its master brought to the device in f32 and cast there to
/// the compute dtype, the cast the gather makes without offload (burn-flex's f32 to bf16 rounding
/// differs from the host's `half` crate's in ties), so that the gathers get the same bits.
pub fn compute_copy<B: Backend>(master: &[f32], compute: Dtype, device: &B::Device) -> Tensor<B, 1> {
    to_device::<B>(master, device).cast(compute.dtype())
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
    /// updates), a frozen part's values in the compute dtype; an offloaded trained part's in the
    /// compute dtype (its master is [`HostStates::master`]).
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

    /// A trained part whose optimizer is offloaded (see [`HostStates`]): this rank's f32 values
    /// stay in host memory, the device gets them in the compute dtype.
    pub fn offloaded(
        name: &'static str,
        layout: FlatLayout,
        values: Vec<f32>,
        kind: OptimizerKind,
        rank: usize,
        compute: Dtype,
        device: &B::Device,
    ) -> Self {
        assert_eq!(values.len(), layout.shard_len());
        let shard = compute_copy(&values, compute, device);
        let optim = OptimState::offloaded(values, &layout, rank, kind, device);
        Self { name, layout, shard, optim: Some(optim), compute }
    }

    pub fn is_trainable(&self) -> bool {
        self.optim.is_some()
    }

    /// The offloaded states, when the part has them.
    pub fn host(&self) -> Option<&HostStates> {
        self.optim.as_ref().and_then(|o| o.host.as_ref())
    }

    /// This rank's values at the precision it keeps them, on the device: a trained part's f32
    /// master (brought from the host when offloaded), a frozen part's shard.
    pub fn full_precision_shard(&self) -> Tensor<B, 1> {
        match self.host() {
            Some(host) => to_device(&host.master, &self.shard.device()),
            None => self.shard.clone(),
        }
    }

    /// What this rank contributes to the part's all-gather: its shard in the compute dtype.
    pub fn gather_input(&self) -> Tensor<B, 1> {
        self.shard.clone().cast(self.compute.dtype())
    }

    /// Bytes of model state this rank holds on its device: see [`part_state_bytes`]; with
    /// AdamW8bit, the f32 master and gradient shards and the 8-bit states; offloaded, the shard in
    /// the compute dtype only.
    pub fn state_bytes(&self) -> usize {
        if self.host().is_some() {
            return self.layout.shard_len() * self.compute.bytes();
        }
        match self.optim.as_ref().and_then(|o| o.blockwise8.as_ref()) {
            Some(states) => 8 * self.layout.shard_len() + states.bytes(),
            None => part_state_bytes(&self.layout, self.is_trainable(), self.compute),
        }
    }

    /// Bytes of offloaded states this rank holds in host memory: master, gradient, m and v (or
    /// AdamW8bit's states); 0 when not offloaded.
    pub fn host_state_bytes(&self) -> usize {
        let Some(optim) = &self.optim else { return 0 };
        optim.host.as_ref().map_or(0, |host| host.bytes() + optim.blockwise8.as_ref().map_or(0, Blockwise8State::bytes))
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

    /// Bytes of model state on the device.
    pub fn state_bytes(&self) -> usize {
        self.parts.iter().map(Part::state_bytes).sum::<usize>() + self.nf4.as_ref().map_or(0, |n| n.layout.state_bytes())
    }

    /// Bytes of offloaded states in host memory.
    pub fn host_state_bytes(&self) -> usize {
        self.parts.iter().map(Part::host_state_bytes).sum()
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
