//! Where the ranks run and which links the collectives cross, for the run's header: nodes,
//! ranks per node, shard groups.

use burn::tensor::backend::Backend;
use shard_comm::{Collective, ReduceOp};

/// The job's ranks by node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    /// Ranks on each node, in the order of their first rank.
    pub ranks_per_node: Vec<usize>,
}

impl Topology {
    /// Collective: every rank must call it. Each node's first local rank reports its node's size.
    pub fn gather<B: Backend, C: Collective<B>>(comm: &C) -> Self {
        let world = *comm.world();
        let mut sizes = vec![0.0; world.size];
        if world.local_rank == 0 {
            sizes[world.rank] = world.local_size as f64;
        }
        comm.all_reduce_scalars(&mut sizes, ReduceOp::Sum);
        Self { ranks_per_node: sizes.into_iter().filter(|&s| s > 0.0).map(|s| s as usize).collect() }
    }

    fn ranks(&self) -> usize {
        self.ranks_per_node.iter().sum()
    }

    /// The header's lines: the world, the shard groups, and the links of each collective. Every
    /// rank shards the whole model (one group); the collectives run over MPI.
    pub fn header(&self) -> Vec<String> {
        let (ranks, nodes) = (self.ranks(), self.ranks_per_node.len());
        let (min, max) = (self.ranks_per_node.iter().min().copied().unwrap_or(0), self.ranks_per_node.iter().max().copied().unwrap_or(0));
        let per_node = if min == max { format!("{max} per node") } else { format!("{min} to {max} per node: {:?}", self.ranks_per_node) };
        let links = match nodes {
            1 => "shared memory (one node)".to_owned(),
            n => format!("shared memory inside a node, the network between the {n} nodes (the slower link paces them)"),
        };
        vec![
            format!("world: {ranks} rank(s) on {nodes} node(s) ({per_node}); shard groups: 1 of {ranks} rank(s), each rank holding 1/{ranks} of the model states"),
            format!("  all-gather, reduce-scatter (every unit, each micro-batch): the shard group, over MPI: {links}"),
            format!("  all-reduce (grad norm, token counts, each step): all ranks, over MPI: {links}"),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::Topology;

    #[test]
    fn header_names_nodes_ranks_groups_and_links() {
        let one = Topology { ranks_per_node: vec![2] }.header();
        assert_eq!(one[0], "world: 2 rank(s) on 1 node(s) (2 per node); shard groups: 1 of 2 rank(s), each rank holding 1/2 of the model states");
        assert!(one[1].ends_with("over MPI: shared memory (one node)"), "{}", one[1]);
        let two = Topology { ranks_per_node: vec![8, 8] }.header();
        assert!(two[0].starts_with("world: 16 rank(s) on 2 node(s) (8 per node)"), "{}", two[0]);
        assert!(two[2].contains("the network between the 2 nodes"), "{}", two[2]);
        let uneven = Topology { ranks_per_node: vec![4, 2] }.header();
        assert!(uneven[0].contains("(2 to 4 per node: [4, 2])"), "{}", uneven[0]);
    }
}
