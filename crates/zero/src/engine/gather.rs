//! Gathering units: the order a micro-batch gathers them in, each unit's all-gather started one
//! unit ahead (prefetch), and a gathered unit's parameters by name, as constants for a forward
//! pass or as autodiff leaves for the recompute.

use std::collections::VecDeque;

use burn::tensor::Tensor;
use burn::tensor::backend::{AutodiffBackend, Backend};
use shard_comm::{Collective, Pending};
use shard_model::Weights;

use super::Engine;
use crate::memory::Category;
use crate::nf4_part::PendingNf4;

/// A unit's parts gathered to full size (one flat tensor per part), and its NF4 weights
/// dequantized, counted in the ledger until released.
pub(super) struct Gathered<T: Backend> {
    pub(super) unit: usize,
    parts: Vec<Tensor<T, 1>>,
    dequantized: Vec<(String, Tensor<T, 1>)>,
    bytes: usize,
}

/// A unit's gather under way.
struct PendingUnit<T: Backend> {
    parts: Vec<Pending<T>>,
    nf4: Option<PendingNf4<T>>,
}

/// The units a micro-batch gathers, in order, with the next one's gather already under way.
pub(super) struct GatherQueue<T: Backend> {
    order: VecDeque<usize>,
    prefetched: Option<(usize, PendingUnit<T>)>,
}

impl<T: Backend> GatherQueue<T> {
    /// The units in `order`, none gathered yet.
    pub(super) fn new(order: VecDeque<usize>) -> Self {
        Self { order, prefetched: None }
    }

    /// Whether every unit was gathered.
    pub(super) fn is_done(&self) -> bool {
        self.order.is_empty() && self.prefetched.is_none()
    }
}

/// The parameters of a gathered unit on the autodiff backend: trainable parts as leaves (kept
/// per part, in layout order, to read their gradients back), frozen parts as constants.
pub(super) struct Leaves<B: AutodiffBackend> {
    pub(super) weights: Weights<B>,
    pub(super) per_part: Vec<Option<Vec<Tensor<B, 1>>>>,
}

impl<B: AutodiffBackend, C: Collective<B::InnerBackend>> Engine<B, C> {
    /// The units one micro-batch gathers, in order: forward through every unit, then backward
    /// from the last layer (the head's backward runs with its forward), ending with the
    /// embedding when it is trained.
    pub(super) fn gather_queue(&self) -> GatherQueue<B::InnerBackend> {
        let n = self.units.len();
        let mut order: VecDeque<usize> = (0..n).collect();
        order.extend((1..n - 1).rev());
        if self.units[0].is_trainable() {
            order.push_back(0);
        }
        GatherQueue::new(order)
    }

    /// Starts the all-gather of every part of unit `u`, counted in the ledger from now on.
    fn start_gather(&mut self, u: usize) -> PendingUnit<B::InnerBackend> {
        self.owner.debug_check("the all-gather of a unit");
        self.memory.alloc(Category::Gathered, self.units[u].gathered_bytes());
        let unit = &self.units[u];
        let group = &self.groups.group;
        PendingUnit {
            parts: unit.parts.iter().map(|p| group.start_all_gather(p.gather_input())).collect(),
            nf4: unit.nf4.as_ref().map(|n| n.start_gather(group)),
        }
    }

    /// The next unit of the queue gathered to full size, after starting the gather of the one
    /// after it.
    pub(super) fn next_gathered(&mut self, queue: &mut GatherQueue<B::InnerBackend>) -> Gathered<B::InnerBackend> {
        let (unit, pending) = match queue.prefetched.take() {
            Some(prefetched) => prefetched,
            None => {
                let u = queue.order.pop_front().expect("a unit left to gather");
                (u, self.start_gather(u))
            }
        };
        if let Some(next) = queue.order.pop_front() {
            queue.prefetched = Some((next, self.start_gather(next)));
        }
        let (parts, nf4): (Vec<_>, _) =
            self.comm_clock.wait(|| (pending.parts.into_iter().map(Pending::wait).collect(), pending.nf4.map(PendingNf4::wait)));
        let compute = self.settings.precision.compute;
        let dequantized = match (nf4, &self.units[unit].nf4) {
            (Some(records), Some(part)) => {
                // The NF4 records are released once dequantized.
                self.memory.alloc(Category::Gathered, part.layout.dequantized_bytes(compute));
                let weights = part.dequantize(records, compute);
                self.memory.free(Category::Gathered, part.layout.gathered_bytes());
                weights
            }
            _ => Vec::new(),
        };
        Gathered { unit, parts, dequantized, bytes: self.units[unit].dequantized_bytes(compute) }
    }

    pub(super) fn release(&mut self, gathered: Gathered<B::InnerBackend>) {
        self.memory.free(Category::Gathered, gathered.bytes);
    }

    /// The gathered parameters by name, for a forward pass without autodiff.
    pub(super) fn weights(&self, gathered: &Gathered<B::InnerBackend>) -> Weights<B::InnerBackend> {
        let mut weights = Weights::default();
        for (part, full) in self.units[gathered.unit].parts.iter().zip(&gathered.parts) {
            part.split_into(full.clone(), &mut weights);
        }
        for (name, values) in &gathered.dequantized {
            weights.insert(name.clone(), values.clone());
        }
        weights
    }

    /// The gathered parameters on the autodiff backend: leaves for the trainable parts.
    pub(super) fn leaves(&self, gathered: &Gathered<B::InnerBackend>) -> Leaves<B> {
        let mut weights = Weights::default();
        let mut per_part = Vec::new();
        for (part, full) in self.units[gathered.unit].parts.iter().zip(&gathered.parts) {
            let mut part_leaves = part.is_trainable().then(Vec::new);
            for (spec, offset) in &part.layout.params {
                let flat = Tensor::<B, 1>::from_inner(full.clone().narrow(0, *offset, spec.numel()));
                let flat = match part_leaves.as_mut() {
                    Some(leaves) => {
                        let leaf = flat.require_grad();
                        leaves.push(leaf.clone());
                        leaf
                    }
                    None => flat,
                };
                weights.insert(spec.name.clone(), flat);
            }
            per_part.push(part_leaves);
        }
        for (name, values) in &gathered.dequantized {
            weights.insert(name.clone(), Tensor::from_inner(values.clone()));
        }
        Leaves { weights, per_part }
    }
}
