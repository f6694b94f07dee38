//! Hybrid sharding: the ranks split into shard groups of consecutive ranks (a node's GPUs, say);
//! each group shards one whole copy of the model, and the groups are replicas of each other.

/// A rank's two collectives besides the whole job's.
pub struct ShardGroups<C> {
    /// The ranks that shard one copy of the model with this one: every unit is all-gathered and
    /// its gradients reduce-scattered among them, on the fast links.
    pub group: C,
    /// The ranks at this rank's place in every group, one per group: their grad shards are summed
    /// before clipping. Of size 1 when one group holds every rank (plain ZeRO-3).
    pub replicas: C,
}
