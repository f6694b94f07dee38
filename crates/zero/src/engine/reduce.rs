//! Reducing gradients: a trained part's full-size gradient cast to the reduce dtype and
//! reduce-scattered into this rank's f32 grad shard (one in flight while the next unit
//! recomputes; an offloaded shard in host memory gets the slice there), and the grad shards
//! summed over the replicas of other shard groups.

use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{DType, Tensor};
use shard_comm::{Collective, Pending};

use super::Engine;
use super::gather::Gathered;
use crate::memory::Category;
use crate::optimizer::take;
use crate::unit::to_device;

/// A trained part's full-size gradient being reduce-scattered into this rank's slice.
pub(super) struct Reducing<T: Backend> {
    unit: usize,
    part: usize,
    /// The full-size gradient's bytes, counted in the ledger until the slice is added.
    bytes: usize,
    slice: Pending<T>,
}

impl<B: AutodiffBackend, C: Collective<B::InnerBackend>> Engine<B, C> {
    /// Each shard group reduce-scattered its own ranks' gradients: summing the grad shards over
    /// the replicas makes every group's the gradient of the whole job's batch.
    pub(super) fn sum_grads_over_replicas(&mut self) {
        if self.groups.replicas.world().size == 1 {
            return;
        }
        let replicas = &self.groups.replicas;
        let (units, device) = (&mut self.units, &self.device);
        self.comm_clock.wait(|| {
            for optim in units.iter_mut().flat_map(|u| &mut u.parts).filter_map(|p| p.optim.as_mut()) {
                match optim.host.as_mut() {
                    None => optim.grad = replicas.all_reduce(take(&mut optim.grad)),
                    // An offloaded gradient makes the round trip through the device's collective.
                    Some(host) => host.grad = to_host(replicas.all_reduce(to_device(&host.grad, device))),
                }
            }
        });
    }

    /// For each trainable part of the gathered unit: takes its leaves' gradients out of
    /// `grads`, casts them to the reduce dtype and starts reduce-scattering them as one flat
    /// padded vector, after adding the one in flight to its grad shard.
    pub(super) fn reduce_gradients(
        &mut self,
        gathered: &Gathered<B::InnerBackend>,
        leaves: Vec<Option<Vec<Tensor<B, 1>>>>,
        grads: &mut B::Gradients,
    ) {
        let reduce = self.settings.precision.reduce;
        for (p, part_leaves) in leaves.into_iter().enumerate() {
            let Some(part_leaves) = part_leaves else { continue };
            let layout = &self.units[gathered.unit].parts[p].layout;
            let (padded, padding) = (layout.padded(), layout.padded() - layout.numel);
            let mut pieces: Vec<Tensor<B::InnerBackend, 1>> =
                part_leaves.iter().map(|leaf| leaf.grad_remove(grads).expect("every trainable parameter is used")).collect();
            if padding > 0 {
                pieces.push(Tensor::zeros([padding], (&self.device, pieces[0].dtype())));
            }
            self.finish_reduce();
            let bytes = padded * reduce.bytes();
            self.memory.alloc(Category::Gathered, bytes);
            let full = Tensor::cat(pieces, 0).cast(reduce.dtype());
            let group = &self.groups.group;
            self.owner.debug_check("the reduce-scatter of a unit's gradients");
            let slice = self.comm_clock.wait(|| group.start_reduce_scatter(full));
            self.reducing = Some(Reducing { unit: gathered.unit, part: p, bytes, slice });
        }
    }

    /// Waits for the reduce-scatter in flight, if any, and adds this rank's slice (in f32) to
    /// its part's grad shard.
    pub(super) fn finish_reduce(&mut self) {
        let Some(reducing) = self.reducing.take() else { return };
        let slice = self.comm_clock.wait(|| reducing.slice.wait()).cast(DType::F32);
        self.memory.free(Category::Gathered, reducing.bytes);
        let optim = self.units[reducing.unit].parts[reducing.part].optim.as_mut().expect("trainable");
        match optim.host.as_mut() {
            None => optim.grad = take(&mut optim.grad) + slice,
            Some(host) => host.add_grad(&to_host(slice)),
        }
    }
}

/// An f32 tensor's values in host memory.
fn to_host<T: Backend>(tensor: Tensor<T, 1>) -> Vec<f32> {
    tensor.into_data().into_vec::<f32>().expect("an f32 gradient")
}
