//! The ZeRO-3 step: units gathered one at a time, forward without autodiff keeping each layer's
//! input, backward by recomputing each unit with autodiff from that input, gradients of the
//! trainable parts reduce-scattered into f32 shards, then global-norm clipping and AdamW on the
//! shards. Full fine-tuning, LoRA and QLoRA run through the same code: LoRA only changes which
//! parts are trainable, QLoRA adds a frozen NF4 part to each decoder layer, dequantized after
//! its gather. Every buffer of model state is a tensor on the rank's device (with an offloaded
//! optimizer, `TrainSettings::offload`, a trained part's master, gradient and Adam states are in
//! host memory instead, and AdamW runs there: see `unit::HostStates`); the next unit's
//! all-gather is started before the current one computes (prefetch), so at most two units are
//! gathered at once. A trained part's gradient is reduce-scattered while the next unit
//! recomputes (one reduce-scatter in flight), and added to its shard before the next one starts.
//!
//! This file holds the step; its seams are modules of their own: `gather` (the order and the
//! prefetch, a gathered unit's parameters), `forward` (embedding and layers without autodiff,
//! shared by training and evaluation), `reduce` (gradients into the shards), `eval` and `export`;
//! resuming from a save is `crate::resume`.

use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{ElementConversion, Int, Tensor, TensorData};
use shard_checkpoint::CheckpointError;
use shard_comm::{Collective, ReduceOp, Traffic};
use shard_core::AttentionPath;
use shard_data::Batch;
use shard_model::{
    Block, DecoderLayer, Embedding, Head, LayerLora, LoraConfig, MistralConfig, SequenceContext, WeightsError, cross_entropy_sum, hash,
    predicting_positions,
};

use crate::comm_clock::CommClock;
use crate::memory::{Category, MemoryLedger};
use crate::optimizer::{self, AdamW, take};
use crate::owner_thread::OwnerThread;
use crate::unit::{OptimState, Part, compute_copy};
use crate::{FlatLayout, LrSchedule, MixedPrecision, Nf4Part, OptimizerKind, ParamSource, ShardGroups, Unit, read_shard};

mod eval;
mod export;
mod forward;
mod gather;
mod reduce;

pub use eval::EvalReport;
pub use export::{ExportKind, FlatPart, UnitSink};
use forward::Checkpoints;

use reduce::Reducing;

/// How the trainable parameters are optimized.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrainSettings {
    pub optimizer: AdamW,
    /// Whether m and v are f32 or AdamW8bit's blockwise 8-bit states.
    pub optimizer_kind: OptimizerKind,
    /// `runtime.offload = "optimizer"`: the trained parts' f32 masters, gradient shards and Adam
    /// states in host memory, the update on the host; the device keeps their compute-dtype copy.
    pub offload: bool,
    pub schedule: LrSchedule,
    /// 0 turns clipping off.
    pub max_grad_norm: f64,
    /// Seeds the LoRA dropout masks.
    pub seed: u64,
    pub precision: MixedPrecision,
    /// How the layers attend: fused (the default) or eager.
    pub attention: AttentionPath,
}

/// LoRA adapters to train on a frozen base, and where their initial values come from.
pub struct Adapters<'a> {
    pub config: LoraConfig,
    pub source: &'a dyn ParamSource,
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
    /// This rank's collective traffic during the step: the whole job's scalars and its shard
    /// group's gathers and reduce-scatters (intra-group).
    pub traffic: Traffic,
    /// Its traffic with its replicas in the other shard groups (inter-group): the grad shards'
    /// all-reduce.
    pub replica_traffic: Traffic,
    /// The most bytes this rank's engine held at once during the step.
    pub peak_bytes: u64,
    /// The most bytes of unit-sized buffers (gathered weights and their full-size gradients)
    /// held at once during the step.
    pub peak_gathered_bytes: u64,
    /// Seconds this rank's device sat idle waiting for collectives (gathers the prefetch did not
    /// hide, reduce-scatters that outlasted the next unit's compute, reductions of scalars).
    pub exposed_comm_s: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error(transparent)]
    Weights(#[from] WeightsError),
    /// The step's loss or gradient norm is NaN or infinite: no update was applied, the gradients
    /// were dropped, and the step counts as done (the LR schedule moves on, as after a skip).
    #[error("step {step}: {}", nonfinite_message(*loss, *grad_norm, first_unit.as_deref()))]
    NonFinite { step: u64, loss: f64, grad_norm: f64, first_unit: Option<String> },
}

fn nonfinite_message(loss: f64, grad_norm: f64, first_unit: Option<&str>) -> String {
    let mut msg = format!("loss {loss}, gradient norm {grad_norm}: not finite, the update was not applied");
    if let Some(unit) = first_unit {
        msg.push_str(&format!(" (first non-finite gradient in {unit})"));
    }
    msg
}

/// The engine of one rank. `B` is the autodiff backend used to recompute units in backward; its
/// inner backend runs the forward pass.
pub struct Engine<B: AutodiffBackend, C: Collective<B::InnerBackend>> {
    config: MistralConfig,
    lora: Option<LoraConfig>,
    pub(crate) units: Vec<Unit<B::InnerBackend>>,
    /// Every rank of the job: token counts and losses are summed over it.
    pub(crate) comm: C,
    pub(crate) groups: ShardGroups<C>,
    pub(crate) device: B::Device,
    settings: TrainSettings,
    pub(crate) steps_done: u64,
    pub(crate) micro_batches_done: u64,
    memory: MemoryLedger,
    /// Exposed communication since the step began.
    comm_clock: CommClock<B::InnerBackend>,
    /// The reduce-scatter in flight, if any.
    reducing: Option<Reducing<B::InnerBackend>>,
    /// The thread every tensor op of this rank runs on (checked in debug builds).
    pub(crate) owner: OwnerThread,
}

impl<B: AutodiffBackend, C: Collective<B::InnerBackend>> Engine<B, C> {
    /// Builds this rank's shards of every unit, reading only this rank's ranges: the base
    /// parameters from `base` (a decoder layer's projections in NF4 records when `base` has
    /// them, [`ParamSource::nf4`]), and with `adapters` the LoRA adapters of every decoder layer
    /// (then only the adapters are trained). The units are sharded over `groups.group`.
    pub fn new(
        config: MistralConfig,
        base: &dyn ParamSource,
        adapters: Option<Adapters>,
        comm: C,
        groups: ShardGroups<C>,
        device: B::Device,
        settings: TrainSettings,
    ) -> Result<Self, EngineError> {
        let world = *groups.group.world();
        let compute = settings.precision.compute;
        let mut memory = MemoryLedger::default();
        let mut units = Vec::new();
        for block in Block::all(&config) {
            let split = block.parts(&config, adapters.as_ref().map(|a| &a.config), base.nf4().is_some());
            let nf4 = match base.nf4() {
                Some(source) if !split.quantized.is_empty() => {
                    Some(Nf4Part::read(split.quantized, source, world.size, world.rank, &device)?)
                }
                _ => None,
            };
            let part = |name, layout: FlatLayout, source: &dyn ParamSource, trainable| -> Result<Part<_>, EngineError> {
                let shard = read_shard(source, &layout, world.rank)?;
                Ok(if trainable && settings.offload {
                    Part::offloaded(name, layout, shard, settings.optimizer_kind, world.rank, compute, &device)
                } else {
                    Part::new(name, layout, shard, trainable, compute, &device)
                })
            };
            let mut parts = vec![part("base", FlatLayout::new(split.base, world.size), base, split.base_trained)?];
            if let (Some(adapters), Some(specs)) = (&adapters, split.adapters) {
                parts.push(part("adapters", FlatLayout::new(specs, world.size), adapters.source, true)?);
            }
            if settings.optimizer_kind == OptimizerKind::AdamW8bit && !settings.offload {
                for part in parts.iter_mut().filter(|p| p.is_trainable()) {
                    part.optim = Some(OptimState::blockwise8(&part.layout, world.rank, &device));
                }
            }
            let unit = Unit { block, parts, nf4 };
            memory.alloc(Category::ModelStates, unit.state_bytes());
            memory.alloc(Category::HostStates, unit.host_state_bytes());
            units.push(unit);
        }
        let lora = adapters.map(|a| a.config);
        let comm_clock = CommClock::new(device.clone());
        Ok(Self {
            config,
            lora,
            units,
            comm,
            groups,
            device,
            settings,
            steps_done: 0,
            micro_batches_done: 0,
            memory,
            comm_clock,
            reducing: None,
            owner: OwnerThread::current(),
        })
    }

    pub fn config(&self) -> &MistralConfig {
        &self.config
    }

    pub fn lora(&self) -> Option<&LoraConfig> {
        self.lora.as_ref()
    }

    /// The collective of every rank of the job.
    pub fn comm(&self) -> &C {
        &self.comm
    }

    /// The collectives of this rank's shard group and of its replicas.
    pub fn groups(&self) -> &ShardGroups<C> {
        &self.groups
    }

    pub fn units(&self) -> &[Unit<B::InnerBackend>] {
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
        self.owner.debug_check("Engine::step");
        self.memory.reset_peaks();
        self.comm_clock.restart();
        let traffic_before = self.intra_group_traffic();
        let replica_traffic_before = self.groups.replicas.traffic();

        // The loss is normalised by the target tokens of the whole step on all ranks, so that
        // any split into ranks and micro-batches is the same as one big batch.
        let mut counts = [0.0, 0.0];
        for batch in micro_batches {
            counts[0] += batch.target_tokens() as f64;
            counts[1] += batch.tokens as f64;
        }
        self.all_reduce_scalars(&mut counts);
        let [target_tokens, tokens] = counts;
        let loss_scale = 1.0 / target_tokens.max(1.0);

        let mut loss_sum = [0.0];
        for batch in micro_batches {
            loss_sum[0] += self.micro_batch(batch, loss_scale)?;
        }
        self.all_reduce_scalars(&mut loss_sum);

        self.sum_grads_over_replicas();
        let loss = loss_sum[0] * loss_scale;
        let grad_norm = self.gradient_norm();
        if !loss.is_finite() || !grad_norm.is_finite() {
            let first_unit = self.first_nonfinite_unit();
            for part in self.trained_parts_mut() {
                part.optim.as_mut().expect("trained").zero_grad();
            }
            self.steps_done += 1;
            return Err(EngineError::NonFinite { step: self.steps_done, loss, grad_norm, first_unit });
        }
        let clip = optimizer::clip_factor(grad_norm, self.settings.max_grad_norm);
        let lr = self.settings.schedule.lr_at(self.steps_done);
        self.steps_done += 1;
        self.apply_adamw(lr, clip);

        Ok(StepReport {
            loss,
            grad_norm,
            lr,
            target_tokens: target_tokens as u64,
            tokens: tokens as u64,
            traffic: self.intra_group_traffic().since(&traffic_before),
            replica_traffic: self.groups.replicas.traffic().since(&replica_traffic_before),
            peak_bytes: self.memory.peak_total(),
            peak_gathered_bytes: self.memory.peak(Category::Gathered),
            exposed_comm_s: self.comm_clock.restart().as_secs_f64(),
        })
    }

    /// Sums host scalars over every rank of the job, counting the wait.
    fn all_reduce_scalars(&mut self, values: &mut [f64]) {
        let comm = &self.comm;
        self.comm_clock.wait(|| comm.all_reduce_scalars(values, ReduceOp::Sum));
    }

    /// The job's scalars and the shard group's traffic, together.
    fn intra_group_traffic(&self) -> Traffic {
        self.comm.traffic().plus(&self.groups.group.traffic())
    }

    /// Forward and backward of one micro-batch; gradients are added to the grad shards. Returns
    /// this rank's sum of token losses.
    fn micro_batch(&mut self, batch: &Batch, loss_scale: f64) -> Result<f64, EngineError> {
        let (rows, seq) = (batch.rows, batch.seq);
        let compute = self.settings.precision.compute;
        let ids = TensorData::new(batch.input_ids.clone(), [rows, seq]);
        let ctx = SequenceContext::<B::InnerBackend>::new(
            &self.config,
            seq,
            &batch.starts,
            &self.device,
            compute.dtype(),
            self.settings.attention,
        );
        let ctx_ad = SequenceContext::<B>::new(&self.config, seq, &batch.starts, &self.device, compute.dtype(), self.settings.attention);
        let activation_bytes = rows * seq * self.config.hidden_size * compute.bytes();
        let layers = self.config.num_hidden_layers;
        // Dropout masks depend on (run seed, micro-batch, layer): the recompute in backward
        // drops exactly what the forward dropped.
        let dropout_seed = hash::mix(self.settings.seed, self.micro_batches_done);
        self.micro_batches_done += 1;
        let lora = self.lora.clone();
        let layer_lora =
            |layer: usize| lora.as_ref().map(|config| LayerLora { config, dropout_seed: hash::mix(dropout_seed, layer as u64) });
        let mut queue = self.gather_queue();

        // Forward without autodiff, keeping each layer's input.
        let mut checkpoints = Checkpoints { inputs: Vec::with_capacity(layers), bytes_each: activation_bytes };
        let x = self.forward_layers(&mut queue, ids.clone(), &ctx, &layer_lora, Some(&mut checkpoints))?;

        // The head: forward and backward in one go, from the last hidden state.
        let gathered = self.next_gathered(&mut queue);
        let mut leaves = self.leaves(&gathered);
        let head = Head::<B>::from_weights(&self.config, &mut leaves.weights)?;
        let hidden = Tensor::<B, 3>::from_inner(x).require_grad();
        let token_loss_sum = cross_entropy_sum(head.forward(predicting_positions(hidden.clone())), &batch.labels);
        let mut grads = token_loss_sum.clone().mul_scalar(loss_scale).backward();
        let loss = token_loss_sum.into_scalar().elem::<f64>();
        let mut d_hidden = hidden.grad_remove(&mut grads).expect("the loss depends on the hidden state");
        self.reduce_gradients(&gathered, leaves.per_part, &mut grads);
        // The head's weights are views of the gathered buffers: drop them with it.
        drop((grads, head));
        self.release(gathered);

        // Backward through the layers, recomputing each from its checkpoint.
        for layer in (0..layers).rev() {
            let input = checkpoints.inputs.pop().expect("one checkpoint per layer");
            let gathered = self.next_gathered(&mut queue);
            let mut leaves = self.leaves(&gathered);
            let block = DecoderLayer::<B>::from_weights(&self.config, layer, &mut leaves.weights, layer_lora(layer))?;
            let input = Tensor::<B, 3>::from_inner(input).require_grad();
            let output = block.forward(input.clone(), &ctx_ad);
            let mut grads = (output * Tensor::from_inner(d_hidden)).sum().backward();
            d_hidden = input.grad_remove(&mut grads).expect("the output depends on the input");
            self.reduce_gradients(&gathered, leaves.per_part, &mut grads);
            drop((grads, block));
            self.release(gathered);
            self.memory.free(Category::Checkpoints, activation_bytes);
        }

        if self.units[0].is_trainable() {
            let gathered = self.next_gathered(&mut queue);
            let mut leaves = self.leaves(&gathered);
            let embedding = Embedding::<B>::from_weights(&self.config, &mut leaves.weights)?;
            let embedded = embedding.forward(Tensor::<B, 2, Int>::from_data(ids, &self.device));
            let mut grads = (embedded * Tensor::from_inner(d_hidden)).sum().backward();
            self.reduce_gradients(&gathered, leaves.per_part, &mut grads);
            self.release(gathered);
        }
        self.finish_reduce();
        debug_assert!(queue.is_done());
        Ok(loss)
    }

    fn trained_parts_mut(&mut self) -> impl Iterator<Item = &mut Part<B::InnerBackend>> {
        self.units.iter_mut().flat_map(|u| &mut u.parts).filter(|p| p.is_trainable())
    }

    /// The global gradient norm (before clipping). The shards stay where they are (on the
    /// device only one small tensor of sums is read back). Every shard group holds the whole
    /// gradient: the squares are summed over the group only.
    fn gradient_norm(&mut self) -> f64 {
        let optims = self.units.iter().flat_map(|u| &u.parts).filter_map(|p| p.optim.as_ref());
        let local = optimizer::grad_sums_of_squares(optims).into_iter().map(f64::from).sum::<f64>();
        let mut sum_sq = [local];
        let group = &self.groups.group;
        self.comm_clock.wait(|| group.all_reduce_scalars(&mut sum_sq, ReduceOp::Sum));
        sum_sq[0].sqrt()
    }

    /// The first unit whose gradient is not finite on some rank (one all-reduce; only after a
    /// non-finite norm). None when the gradients are finite (a non-finite loss alone).
    fn first_nonfinite_unit(&mut self) -> Option<String> {
        let mut flags: Vec<f64> = self
            .units
            .iter()
            .map(|u| {
                let finite = optimizer::grad_sums_of_squares(u.parts.iter().filter_map(|p| p.optim.as_ref())).iter().all(|s| s.is_finite());
                f64::from(u8::from(!finite))
            })
            .collect();
        self.comm.all_reduce_scalars(&mut flags, ReduceOp::Max);
        let first = flags.iter().position(|&f| f > 0.0)?;
        Some(match self.units[first].block {
            Block::Embedding => "the embedding (model.embed_tokens)".into(),
            Block::Layer(i) => format!("model.layers.{i}"),
            Block::Head => "the head (model.norm, lm_head)".into(),
        })
    }

    /// Clips the grad shards by `clip` (`clip_grad_norm_`'s factor) and updates every trained
    /// shard with them; the grad shards are zero afterwards.
    fn apply_adamw(&mut self, lr: f64, clip: Option<f32>) {
        let (step, optimizer) = (self.steps_done, self.settings.optimizer);
        let group = &self.groups.group;
        let rank = group.world().rank;
        let mut max_over_group = |values: &mut [f64]| group.all_reduce_scalars(values, ReduceOp::Max);
        for part in self.units.iter_mut().flat_map(|u| &mut u.parts).filter(|p| p.is_trainable()) {
            let shard = take(&mut part.shard);
            let optim = part.optim.as_mut().expect("trained");
            part.shard = match (optim.host.as_mut(), optim.blockwise8.as_mut()) {
                (Some(host), states) => {
                    match states {
                        None => optimizer.update_on_host(step, lr, clip, host),
                        Some(states) => {
                            states.update(
                                &part.layout,
                                rank,
                                &optimizer,
                                step,
                                lr,
                                clip,
                                &mut host.master,
                                &host.grad,
                                &mut max_over_group,
                            );
                            host.grad.fill(0.0);
                        }
                    }
                    // The old copy (`shard`) is released before the new one comes up.
                    drop(shard);
                    compute_copy(&host.master, part.compute, &self.device)
                }
                (None, None) => optimizer.update(step, lr, clip, shard, optim),
                (None, Some(states)) => {
                    let (shard, grad) = shard_kernels::update_on_host(shard, take(&mut optim.grad), &self.device, |params, grads| {
                        states.update(&part.layout, rank, &optimizer, step, lr, clip, params, grads, &mut max_over_group)
                    });
                    optim.grad = grad;
                    shard
                }
            };
        }
    }
}
