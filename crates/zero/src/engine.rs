//! The ZeRO-3 step: units gathered one at a time, forward without autodiff keeping each unit's
//! input, backward by recomputing each unit with autodiff from that input, gradients
//! reduce-scattered into f32 shards, then global-norm clipping and AdamW on the shards.

use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{ElementConversion, Int, Tensor, TensorData};
use shard_checkpoint::CheckpointError;
use shard_comm::{Collective, ReduceOp, Traffic};
use shard_data::Batch;
use shard_model::{Block, DecoderLayer, Embedding, Head, MistralConfig, ParamSpec, SequenceContext, Weights, WeightsError, cross_entropy_sum};

use crate::memory::{Category, MemoryLedger};
use crate::optimizer::{self, AdamW};
use crate::{FlatLayout, LrSchedule, ParamSource, Unit, read_shard};

/// How the trainable parameters are optimized.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrainSettings {
    pub optimizer: AdamW,
    pub schedule: LrSchedule,
    /// 0 turns clipping off.
    pub max_grad_norm: f64,
}

/// What one optimizer step did.
#[derive(Debug, Clone, PartialEq)]
pub struct StepReport {
    /// Mean next-token loss over the step's target tokens, all ranks together.
    pub loss: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    pub lr: f64,
    /// Target tokens (labels that carry loss) of the step, all ranks together.
    pub target_tokens: u64,
    /// Input tokens of the step (padding excluded), all ranks together.
    pub tokens: u64,
    /// This rank's collective traffic during the step.
    pub traffic: Traffic,
    /// The most bytes this rank's engine held at once during the step.
    pub peak_bytes: u64,
    /// The most bytes of unit-sized buffers (gathered weights and their full-size gradients)
    /// held at once during the step.
    pub peak_gathered_bytes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error(transparent)]
    Weights(#[from] WeightsError),
}

/// The engine of one rank. `B` is the autodiff backend used to recompute units in backward; its
/// inner backend holds the shards and runs the forward pass.
pub struct Engine<B: AutodiffBackend, C: Collective<B::InnerBackend>> {
    config: MistralConfig,
    units: Vec<Unit>,
    comm: C,
    device: B::Device,
    settings: TrainSettings,
    steps_done: u64,
    memory: MemoryLedger,
}

/// A unit's parameters gathered to full size, counted in the ledger until released.
struct Gathered<T: Backend> {
    weights: Weights<T>,
    bytes: usize,
}

impl<B: AutodiffBackend, C: Collective<B::InnerBackend>> Engine<B, C> {
    /// Builds this rank's shards of every unit from `source`, reading only this rank's ranges.
    pub fn new(config: MistralConfig, source: &dyn ParamSource, comm: C, device: B::Device, settings: TrainSettings) -> Result<Self, EngineError> {
        let world = *comm.world();
        let mut memory = MemoryLedger::default();
        let mut units = Vec::new();
        for block in Block::all(&config) {
            let layout = FlatLayout::new(block.params(&config), world.size);
            let shard = read_shard(source, &layout, world.rank)?;
            let unit = Unit::new(block, layout, shard, true);
            memory.alloc(Category::ModelStates, unit.state_bytes());
            units.push(unit);
        }
        Ok(Self { config, units, comm, device, settings, steps_done: 0, memory })
    }

    pub fn config(&self) -> &MistralConfig {
        &self.config
    }

    pub fn comm(&self) -> &C {
        &self.comm
    }

    pub fn units(&self) -> &[Unit] {
        &self.units
    }

    pub fn memory(&self) -> &MemoryLedger {
        &self.memory
    }

    pub fn steps_done(&self) -> u64 {
        self.steps_done
    }

    /// One optimizer step over this rank's micro-batches (every rank passes the same number).
    pub fn step(&mut self, micro_batches: &[Batch]) -> Result<StepReport, EngineError> {
        self.memory.reset_peaks();
        let traffic_before = self.comm.traffic();

        // The loss is normalised by the target tokens of the whole step on all ranks, so that
        // any split into ranks and micro-batches is the same as one big batch.
        let mut counts = [0.0, 0.0];
        for batch in micro_batches {
            counts[0] += batch.target_tokens() as f64;
            counts[1] += batch.tokens as f64;
        }
        self.comm.all_reduce_scalars(&mut counts, ReduceOp::Sum);
        let [target_tokens, tokens] = counts;
        let loss_scale = 1.0 / target_tokens.max(1.0);

        let mut loss_sum = [0.0];
        for batch in micro_batches {
            loss_sum[0] += self.micro_batch(batch, loss_scale)?;
        }
        self.comm.all_reduce_scalars(&mut loss_sum, ReduceOp::Sum);

        let grad_norm = self.clip_gradients();
        let lr = self.settings.schedule.lr_at(self.steps_done);
        self.steps_done += 1;
        self.apply_adamw(lr);

        Ok(StepReport {
            loss: loss_sum[0] * loss_scale,
            grad_norm,
            lr,
            target_tokens: target_tokens as u64,
            tokens: tokens as u64,
            traffic: self.comm.traffic().since(&traffic_before),
            peak_bytes: self.memory.peak_total(),
            peak_gathered_bytes: self.memory.peak(Category::Gathered),
        })
    }

    /// Forward and backward of one micro-batch; gradients are added to the grad shards. Returns
    /// this rank's sum of token losses.
    fn micro_batch(&mut self, batch: &Batch, loss_scale: f64) -> Result<f64, EngineError> {
        let (rows, seq) = (batch.rows, batch.seq);
        let ids = TensorData::new(batch.input_ids.clone(), [rows, seq]);
        let ctx = SequenceContext::<B::InnerBackend>::new(&self.config, seq, &self.device);
        let ctx_ad = SequenceContext::<B>::new(&self.config, seq, &self.device);
        let activation_bytes = rows * seq * self.config.hidden_size * 4;
        let layers = self.config.num_hidden_layers;

        // Forward without autodiff, keeping each layer's input.
        let mut embedding = self.gather(0)?;
        let mut x = Embedding::from_weights(&self.config, &mut embedding.weights)?
            .forward(Tensor::<B::InnerBackend, 2, Int>::from_data(ids.clone(), &self.device));
        self.release(embedding);
        let mut checkpoints = Vec::with_capacity(layers);
        for layer in 0..layers {
            let mut gathered = self.gather(1 + layer)?;
            let block = DecoderLayer::from_weights(&self.config, layer, &mut gathered.weights)?;
            self.memory.alloc(Category::Checkpoints, activation_bytes);
            checkpoints.push(x.clone());
            x = block.forward(x, &ctx);
            self.release(gathered);
        }

        // The head: forward and backward in one go, from the last hidden state.
        let head_unit = layers + 1;
        let mut gathered = self.gather(head_unit)?;
        let (mut weights, leaves) = leaves_of::<B>(&mut gathered, &self.units[head_unit].layout);
        let head = Head::<B>::from_weights(&self.config, &mut weights)?;
        let hidden = Tensor::<B, 3>::from_inner(x).require_grad();
        let token_loss_sum = cross_entropy_sum(head.forward(hidden.clone()), &batch.labels);
        let mut grads = token_loss_sum.clone().mul_scalar(loss_scale).backward();
        let loss = token_loss_sum.into_scalar().elem::<f64>();
        let mut d_hidden = hidden.grad_remove(&mut grads).expect("the loss depends on the hidden state");
        self.reduce_gradients(head_unit, leaves, &mut grads);
        drop(grads);
        self.release(gathered);

        // Backward through the layers, recomputing each from its checkpoint.
        for layer in (0..layers).rev() {
            let input = checkpoints.pop().expect("one checkpoint per layer");
            let mut gathered = self.gather(1 + layer)?;
            let (mut weights, leaves) = leaves_of::<B>(&mut gathered, &self.units[1 + layer].layout);
            let block = DecoderLayer::<B>::from_weights(&self.config, layer, &mut weights)?;
            let input = Tensor::<B, 3>::from_inner(input).require_grad();
            let output = block.forward(input.clone(), &ctx_ad);
            let mut grads = (output * Tensor::from_inner(d_hidden)).sum().backward();
            d_hidden = input.grad_remove(&mut grads).expect("the output depends on the input");
            self.reduce_gradients(1 + layer, leaves, &mut grads);
            drop(grads);
            self.release(gathered);
            self.memory.free(Category::Checkpoints, activation_bytes);
        }

        let mut gathered = self.gather(0)?;
        let (mut weights, leaves) = leaves_of::<B>(&mut gathered, &self.units[0].layout);
        let embedding = Embedding::<B>::from_weights(&self.config, &mut weights)?;
        let embedded = embedding.forward(Tensor::<B, 2, Int>::from_data(ids, &self.device));
        let mut grads = (embedded * Tensor::from_inner(d_hidden)).sum().backward();
        self.reduce_gradients(0, leaves, &mut grads);
        self.release(gathered);
        Ok(loss)
    }

    /// All-gathers unit `u` to full size.
    fn gather(&mut self, u: usize) -> Result<Gathered<B::InnerBackend>, EngineError> {
        let unit = &self.units[u];
        let full = self.comm.all_gather(unit.shard_tensor(&self.device));
        let bytes = unit.gathered_bytes();
        self.memory.alloc(Category::Gathered, bytes);
        Ok(Gathered { weights: unit.split(full), bytes })
    }

    fn release(&mut self, gathered: Gathered<B::InnerBackend>) {
        self.memory.free(Category::Gathered, gathered.bytes);
    }

    /// Takes the gradients of `leaves` (in layout order) out of `grads`, reduce-scatters them as
    /// one flat padded vector and adds this rank's slice to the unit's grad shard.
    fn reduce_gradients(&mut self, u: usize, leaves: Vec<Tensor<B, 1>>, grads: &mut B::Gradients) {
        let unit = &self.units[u];
        let padding = unit.layout.padded() - unit.layout.numel;
        let mut parts: Vec<Tensor<B::InnerBackend, 1>> =
            leaves.iter().map(|leaf| leaf.grad_remove(grads).expect("every parameter is used")).collect();
        if padding > 0 {
            parts.push(Tensor::zeros([padding], &self.device));
        }
        let bytes = unit.gathered_bytes();
        self.memory.alloc(Category::Gathered, bytes);
        let flat = Tensor::cat(parts, 0);
        let shard = self.comm.reduce_scatter(flat).into_data().into_vec::<f32>().expect("f32 gradients");
        self.memory.free(Category::Gathered, bytes);
        let accumulator = &mut self.units[u].optim.as_mut().expect("gradients only for trainable units").grad;
        accumulator.iter_mut().zip(&shard).for_each(|(a, g)| *a += g);
    }

    /// The global gradient norm (before clipping); scales the grad shards as
    /// `clip_grad_norm_` does.
    fn clip_gradients(&mut self) -> f64 {
        let mut sum_sq = [self.trainable().map(|o| optimizer::sum_of_squares(&o.grad)).sum::<f64>()];
        self.comm.all_reduce_scalars(&mut sum_sq, ReduceOp::Sum);
        let norm = sum_sq[0].sqrt();
        if let Some(factor) = optimizer::clip_factor(norm, self.settings.max_grad_norm) {
            for unit in &mut self.units {
                if let Some(optim) = unit.optim.as_mut() {
                    optimizer::scale(&mut optim.grad, factor);
                }
            }
        }
        norm
    }

    fn apply_adamw(&mut self, lr: f64) {
        let step = self.steps_done;
        for unit in &mut self.units {
            let Some(optim) = unit.optim.as_mut() else { continue };
            self.settings.optimizer.update(step, lr, &mut unit.shard, &optim.grad, &mut optim.m, &mut optim.v);
            optim.grad.iter_mut().for_each(|g| *g = 0.0);
        }
    }

    fn trainable(&self) -> impl Iterator<Item = &crate::unit::OptimState> {
        self.units.iter().filter_map(|u| u.optim.as_ref())
    }

    /// Gathers every unit in turn and hands each parameter, in HF order, to `sink` (on the
    /// ranks that pass one; every rank must call this). No rank holds more than one unit.
    pub fn export(&mut self, mut sink: Option<&mut dyn FnMut(&ParamSpec, &[f32]) -> Result<(), CheckpointError>>) -> Result<(), EngineError> {
        for u in 0..self.units.len() {
            let unit = &self.units[u];
            let full = self.comm.all_gather(unit.shard_tensor(&self.device));
            if let Some(sink) = sink.as_mut() {
                let values = full.into_data().into_vec::<f32>().expect("f32 parameters");
                for (spec, offset) in &unit.layout.params {
                    sink(spec, &values[*offset..offset + spec.numel()])?;
                }
            }
        }
        Ok(())
    }
}

/// The gathered parameters as autodiff leaves, by name for building the block and in layout
/// order for reading their gradients back.
fn leaves_of<B: AutodiffBackend>(gathered: &mut Gathered<B::InnerBackend>, layout: &FlatLayout) -> (Weights<B>, Vec<Tensor<B, 1>>) {
    let mut by_name = Weights::default();
    let mut leaves = Vec::with_capacity(layout.params.len());
    for (spec, _) in &layout.params {
        let flat = gathered.weights.take::<1>(&ParamSpec { name: spec.name.clone(), shape: vec![spec.numel()] }).expect("split from this layout");
        let leaf = Tensor::<B, 1>::from_inner(flat).require_grad();
        leaves.push(leaf.clone());
        by_name.insert(spec.name.clone(), leaf);
    }
    (by_name, leaves)
}
