//! Where the ranks run and which links the collectives cross, for the run's header: nodes,
//! ranks per node, shard groups.

use std::collections::BTreeSet;

use burn::tensor::backend::Backend;
use shard_comm::Collective;

/// The job's ranks by node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    /// Ranks on each node, in the order of their first rank.
    pub ranks_per_node: Vec<usize>,
    /// What carries the gathers, reduce-scatters and all-reduces of tensors ("MPI", "NCCL").
    pub transport: &'static str,
}

impl Topology {
    /// Collective: every rank must call it. Each node's first local rank reports its node's size.
    pub fn gather<B: Backend, C: Collective<B>>(comm: &C) -> Self {
        let world = *comm.world();
        let reported = if world.local_rank == 0 { world.local_size as f64 } else { 0.0 };
        let sizes = comm.all_gather_scalars(&[reported]);
        Self { ranks_per_node: sizes.into_iter().filter(|&s| s > 0.0).map(|s| s as usize).collect(), transport: comm.transport() }
    }

    fn ranks(&self) -> usize {
        self.ranks_per_node.iter().sum()
    }

    /// The node of each rank (nodes hold consecutive ranks, as launch/ maps them).
    fn node_of(&self) -> Vec<usize> {
        self.ranks_per_node.iter().enumerate().flat_map(|(node, &n)| std::iter::repeat_n(node, n)).collect()
    }

    /// The most nodes one of `sets` of ranks spans.
    fn nodes_spanned(&self, sets: impl Iterator<Item = Vec<usize>>) -> usize {
        let node_of = self.node_of();
        sets.map(|ranks| ranks.iter().map(|&r| node_of[r]).collect::<BTreeSet<_>>().len()).max().unwrap_or(1)
    }

    /// The header's lines: the world, the shard groups of `shard_size` consecutive ranks, and
    /// the links each collective crosses, and what carries it.
    pub fn header(&self, shard_size: usize) -> Vec<String> {
        let (ranks, nodes) = (self.ranks(), self.ranks_per_node.len());
        let groups = ranks / shard_size;
        let (min, max) = (self.ranks_per_node.iter().min().copied().unwrap_or(0), self.ranks_per_node.iter().max().copied().unwrap_or(0));
        let per_node = if min == max { format!("{max} per node") } else { format!("{min} to {max} per node: {:?}", self.ranks_per_node) };
        let in_group = self.nodes_spanned((0..groups).map(|g| (g * shard_size..(g + 1) * shard_size).collect()));
        let across_groups = self.nodes_spanned((0..shard_size).map(|r| (r..ranks).step_by(shard_size).collect()));
        let mut lines = vec![
            format!(
                "world: {ranks} rank(s) on {nodes} node(s) ({per_node}); shard groups: {groups} of {shard_size} consecutive rank(s), each rank holding 1/{shard_size} of the model states"
            ),
            format!(
                "  all-gather, reduce-scatter (every unit, each micro-batch): within a shard group, over {}: {}",
                self.transport,
                links(in_group, self.transport)
            ),
        ];
        if groups > 1 {
            lines.push(format!(
                "  all-reduce of the grad shards (each step): across the {groups} groups, over {}: {}",
                self.transport,
                links(across_groups, self.transport)
            ));
        }
        lines.push(format!("  all-reduce (token counts, losses, each step): all ranks, over MPI: {}", links(nodes, "MPI")));
        lines
    }
}

/// The links between ranks spread over `nodes` nodes, as `transport` uses them: MPI moves host
/// memory, NCCL the GPUs' own links.
fn links(nodes: usize, transport: &str) -> String {
    let inside = if transport == "NCCL" { "NVLink or PCIe" } else { "shared memory" };
    match nodes {
        1 => format!("{inside} (one node)"),
        n => format!("{inside} inside a node, the network between {n} nodes (the slower link paces them)"),
    }
}

#[cfg(test)]
mod tests {
    use super::Topology;

    #[test]
    fn header_names_nodes_ranks_groups_and_links() {
        let one = Topology { ranks_per_node: vec![2], transport: "MPI" }.header(2);
        assert_eq!(
            one[0],
            "world: 2 rank(s) on 1 node(s) (2 per node); shard groups: 1 of 2 consecutive rank(s), each rank holding 1/2 of the model states"
        );
        assert!(one[1].ends_with("within a shard group, over MPI: shared memory (one node)"), "{}", one[1]);
        assert_eq!(one.len(), 3, "no replicas: {one:?}");

        let zero3 = Topology { ranks_per_node: vec![8, 8], transport: "NCCL" }.header(16);
        assert!(zero3[0].starts_with("world: 16 rank(s) on 2 node(s) (8 per node); shard groups: 1 of 16"), "{}", zero3[0]);
        assert!(
            zero3[1].contains("over NCCL: NVLink or PCIe inside a node, the network between 2 nodes"),
            "ZeRO-3 gathers across nodes: {}",
            zero3[1]
        );
        assert!(zero3[2].contains("all ranks, over MPI"), "host scalars stay on MPI: {}", zero3[2]);

        let hybrid = Topology { ranks_per_node: vec![8, 8], transport: "MPI" }.header(8);
        assert!(hybrid[0].contains("shard groups: 2 of 8 consecutive rank(s), each rank holding 1/8"), "{}", hybrid[0]);
        assert!(hybrid[1].ends_with("shared memory (one node)"), "a node's gathers stay in the node: {}", hybrid[1]);
        assert!(
            hybrid[2].starts_with("  all-reduce of the grad shards (each step): across the 2 groups")
                && hybrid[2].contains("network between 2 nodes"),
            "{}",
            hybrid[2]
        );

        let uneven = Topology { ranks_per_node: vec![4, 2], transport: "MPI" }.header(6);
        assert!(uneven[0].contains("(2 to 4 per node: [4, 2])"), "{}", uneven[0]);
    }
}

/// The GPU a rank drives, among those CUDA shows it: the one of its local rank, or the only one
/// when the launcher gave each rank a GPU of its own (`CUDA_VISIBLE_DEVICES` with one entry, as
/// SLURM's `--gpus-per-task=1` sets it).
pub fn gpu_of_local_rank(local_rank: usize, cuda_visible_devices: Option<&str>) -> anyhow::Result<usize> {
    let Some(visible) = cuda_visible_devices else { return Ok(local_rank) };
    let count = visible.split(',').filter(|d| !d.trim().is_empty()).count();
    match count {
        1 => Ok(0),
        n if local_rank < n => Ok(local_rank),
        n => anyhow::bail!(
            "local rank {local_rank} has no GPU: CUDA_VISIBLE_DEVICES = {visible:?} shows {n}; run at most {n} ranks per machine (one per GPU)"
        ),
    }
}

#[cfg(test)]
mod gpu_tests {
    use super::gpu_of_local_rank;

    #[test]
    fn local_rank_picks_the_gpu() {
        assert_eq!(gpu_of_local_rank(3, None).unwrap(), 3);
        assert_eq!(gpu_of_local_rank(3, Some("0,1,2,3")).unwrap(), 3);
        assert_eq!(gpu_of_local_rank(3, Some("5")).unwrap(), 0, "a GPU of its own");
        let err = gpu_of_local_rank(2, Some("4,5")).unwrap_err().to_string();
        assert!(err.contains("local rank 2") && err.contains("\"4,5\"") && err.contains("at most 2 ranks"), "{err}");
    }
}
