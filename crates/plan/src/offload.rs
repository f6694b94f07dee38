//! `runtime.offload = "optimizer"` as the plan counts it: each rank's f32 master shard, Adam
//! states and f32 gradient shard live in its node's host memory, where the AdamW step runs; the
//! device keeps the trained parts' shards in the compute dtype only. Per step the reduced
//! gradient shard goes to the host and the updated parameters come back (2 x the compute dtype's
//! bytes + 4 bytes per trained element, the count) over PCIe.

/// Assumed: bytes/s one GPU moves to or from the host (PCIe 4 x16, about 25 GB/s one direction).
pub const PCIE_BANDWIDTH: f64 = 25e9;

/// Assumed: host memory per node (a DGX A100 node's 1 TB, in binary units to stay on the safe side).
pub const HOST_MEMORY_PER_NODE: u64 = 1000 << 30;

/// Assumed: bytes/s the host's AdamW step streams through memory, all ranks of a node together.
pub const HOST_MEMORY_BANDWIDTH: f64 = 100e9;

/// Bytes the host step reads and writes per trained element: the gradient (read), the master and
/// m and v (read and written), f32; with AdamW8bit m and v are a byte each.
pub fn host_step_bytes_per_element(eight_bit: bool) -> f64 {
    if eight_bit { 4.0 + 2.0 * (4.0 + 1.0 + 1.0) } else { 4.0 + 2.0 * 12.0 }
}

/// Bytes over PCIe per trained element per step: the gradient shard down in f32, the updated
/// shard up in the compute dtype, counted twice as the issue states it.
pub fn pcie_bytes_per_element(compute_bytes: u64) -> u64 {
    2 * compute_bytes + 4
}
