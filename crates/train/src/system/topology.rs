//! Where the ranks run and which links the collectives cross, for the run's header: nodes,
//! ranks per node, shard groups.

use std::collections::BTreeSet;

use burn::tensor::backend::Backend;
use shard_comm::Collective;
use shard_core::counted;

/// The job's ranks by node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    /// Ranks on each node, in the order of their first rank.
    pub ranks_per_node: Vec<usize>,
    /// The host name of each node, in the same order.
    pub hosts: Vec<String>,
    /// What carries the gathers, reduce-scatters and all-reduces of tensors ("MPI", "NCCL").
    pub transport: &'static str,
}

/// Nodes named one by one in the header; a larger job's line ends with how many more.
const HOSTS_NAMED: usize = 8;

impl Topology {
    /// Collective: every rank must call it. Each node's first local rank reports its node's size
    /// and host name.
    pub fn gather<B: Backend, C: Collective<B>>(comm: &C) -> Self {
        let world = *comm.world();
        let mut reported = [0.0; 1 + HOST_SCALARS];
        if world.local_rank == 0 {
            reported[0] = world.local_size as f64;
            reported[1..].copy_from_slice(&host_as_scalars(&this_host()));
        }
        let all = comm.all_gather_scalars(&reported);
        let nodes: Vec<&[f64]> = all.chunks(reported.len()).filter(|node| node[0] > 0.0).collect();
        Self {
            ranks_per_node: nodes.iter().map(|node| node[0] as usize).collect(),
            hosts: nodes.iter().map(|node| host_from_scalars(&node[1..])).collect(),
            transport: comm.transport(),
        }
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
                "world: {} on {} ({per_node}); shard groups: {groups} of {}, each rank holding 1/{shard_size} of the model states",
                counted(ranks, "rank"),
                counted(nodes, "node"),
                counted(shard_size, "consecutive rank"),
            ),
            self.hosts_line(),
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

    /// "nodes: nodeA (ranks 0-2), nodeB (ranks 3-5)", the first [`HOSTS_NAMED`] of them.
    fn hosts_line(&self) -> String {
        let mut first_rank = 0;
        let mut named = Vec::new();
        for (host, &ranks) in self.hosts.iter().zip(&self.ranks_per_node).take(HOSTS_NAMED) {
            let last_rank = first_rank + ranks - 1;
            named.push(if ranks == 1 { format!("{host} (rank {first_rank})") } else { format!("{host} (ranks {first_rank}-{last_rank})") });
            first_rank = last_rank + 1;
        }
        let more = self.hosts.len().saturating_sub(HOSTS_NAMED);
        let more = if more > 0 { format!(" and {more} more") } else { String::new() };
        format!("nodes: {}{more}", named.join(", "))
    }
}

/// This machine's host name (as `hostname` prints it).
pub fn this_host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map_or_else(|_| "localhost".into(), |h| h.trim().to_owned())
}

/// Bytes of a host name that one f64 carries exactly (48 bits, below 2^53): the collectives move
/// host values as f64.
const BYTES_PER_SCALAR: usize = 6;
/// Scalars for a host name of up to 66 bytes (Linux allows 64).
const HOST_SCALARS: usize = 11;

fn host_as_scalars(host: &str) -> [f64; HOST_SCALARS] {
    let mut scalars = [0.0; HOST_SCALARS];
    for (scalar, bytes) in scalars.iter_mut().zip(host.as_bytes().chunks(BYTES_PER_SCALAR)) {
        *scalar = bytes.iter().rev().fold(0u64, |value, &byte| (value << 8) | u64::from(byte)) as f64;
    }
    scalars
}

fn host_from_scalars(scalars: &[f64]) -> String {
    let bytes: Vec<u8> =
        scalars.iter().flat_map(|&s| (s as u64).to_le_bytes().into_iter().take(BYTES_PER_SCALAR)).take_while(|&b| b != 0).collect();
    String::from_utf8_lossy(&bytes).into_owned()
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
    use super::{Topology, host_as_scalars, host_from_scalars};

    fn topology(ranks_per_node: &[usize], transport: &'static str) -> Topology {
        let hosts = (0..ranks_per_node.len()).map(|n| format!("node{n}")).collect();
        Topology { ranks_per_node: ranks_per_node.to_vec(), hosts, transport }
    }

    #[test]
    fn header_names_nodes_ranks_groups_and_links() {
        let one = topology(&[2], "MPI").header(2);
        assert_eq!(
            one[0],
            "world: 2 ranks on 1 node (2 per node); shard groups: 1 of 2 consecutive ranks, each rank holding 1/2 of the model states"
        );
        assert_eq!(one[1], "nodes: node0 (ranks 0-1)");
        assert!(one[2].ends_with("within a shard group, over MPI: shared memory (one node)"), "{}", one[2]);
        assert_eq!(one.len(), 4, "no replicas: {one:?}");

        let zero3 = topology(&[8, 8], "NCCL").header(16);
        assert!(zero3[0].starts_with("world: 16 ranks on 2 nodes (8 per node); shard groups: 1 of 16"), "{}", zero3[0]);
        assert_eq!(zero3[1], "nodes: node0 (ranks 0-7), node1 (ranks 8-15)");
        assert!(
            zero3[2].contains("over NCCL: NVLink or PCIe inside a node, the network between 2 nodes"),
            "ZeRO-3 gathers across nodes: {}",
            zero3[2]
        );
        assert!(zero3[3].contains("all ranks, over MPI"), "host scalars stay on MPI: {}", zero3[3]);

        let hybrid = topology(&[8, 8], "MPI").header(8);
        assert!(hybrid[0].contains("shard groups: 2 of 8 consecutive ranks, each rank holding 1/8"), "{}", hybrid[0]);
        assert!(hybrid[2].ends_with("shared memory (one node)"), "a node's gathers stay in the node: {}", hybrid[2]);
        assert!(
            hybrid[3].starts_with("  all-reduce of the grad shards (each step): across the 2 groups")
                && hybrid[3].contains("network between 2 nodes"),
            "{}",
            hybrid[3]
        );

        let uneven = topology(&[4, 2], "MPI").header(6);
        assert!(uneven[0].contains("(2 to 4 per node: [4, 2])"), "{}", uneven[0]);
        let lone_rank = topology(&[4, 2, 1], "MPI").header(7);
        assert_eq!(lone_rank[1], "nodes: node0 (ranks 0-3), node1 (ranks 4-5), node2 (rank 6)");

        let many = topology(&[1; 10], "MPI").header(10);
        assert!(many[1].ends_with("node7 (rank 7) and 2 more"), "{}", many[1]);
    }

    #[test]
    fn host_names_travel_as_scalars() {
        for host in ["nodeA", "gpu-node-0017.cluster.example.org", "", &"h".repeat(64)] {
            let scalars = host_as_scalars(host);
            assert!(scalars.iter().all(|&s| s < (1u64 << 53) as f64), "exact in an f64");
            assert_eq!(host_from_scalars(&scalars), host);
        }
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
