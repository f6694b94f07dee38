//! `runtime.shard_size`: the ranks split into shard groups of that many consecutive ranks, each
//! sharding one copy of the model (hybrid sharding); checked against the job's world at start-up,
//! before anything is loaded.

use anyhow::{Result, bail};
use burn::tensor::backend::Backend;
use shard_comm::{Collective, ReduceOp};
use shard_zero::ShardGroups;

use crate::config::run_config::ShardSize;

/// This rank's shard group and replicas for `setting` (default: one group of every rank). Every
/// rank must call it; all of them fail alike on a size the world cannot be split into.
pub fn shard_groups<B: Backend, C: Collective<B>>(setting: Option<ShardSize>, comm: &C) -> Result<ShardGroups<C>> {
    let world = *comm.world();
    let size = match setting {
        None => world.size,
        Some(ShardSize::Ranks(k)) => k,
        Some(ShardSize::Node(_)) => node_size(comm)?,
    };
    if size > world.size {
        bail!("runtime.shard_size = {size} is more than the job's {} rank(s)", world.size);
    }
    if world.size % size != 0 {
        bail!(
            "runtime.shard_size = {size} does not split the job's {} ranks into equal groups: use a divisor of {}",
            world.size,
            world.size
        );
    }
    Ok(ShardGroups { group: Collective::<B>::split(comm, world.rank / size), replicas: Collective::<B>::split(comm, world.rank % size) })
}

/// `"node"`: the ranks of one node, which must be as many on every node and consecutive (so that
/// a group of that many consecutive ranks is one node).
fn node_size<B: Backend, C: Collective<B>>(comm: &C) -> Result<usize> {
    let world = *comm.world();
    let k = world.local_size;
    // [largest node, -smallest node, ranks not at their place in a node of k]
    let mut checks = [k as f64, -(k as f64), f64::from(u8::from(world.local_rank != world.rank % k))];
    comm.all_reduce_scalars(&mut checks[..2], ReduceOp::Max);
    comm.all_reduce_scalars(&mut checks[2..], ReduceOp::Sum);
    let (largest, smallest) = (checks[0] as usize, -checks[1] as usize);
    if largest != smallest {
        bail!("runtime.shard_size = \"node\": the nodes run from {smallest} to {largest} ranks; give every node as many, or a number");
    }
    if checks[2] > 0.0 {
        bail!(
            "runtime.shard_size = \"node\": the ranks of a node are not consecutive; launch with --map-by slot (launch/ does), or give a number"
        );
    }
    Ok(k)
}
