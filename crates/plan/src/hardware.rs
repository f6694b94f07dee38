//! What a rank runs on: peak dense bf16 FLOP/s, memory and link bandwidths of common GPUs, and
//! the CPU backend of this machine. Every figure is nominal (datasheet or measured, as noted);
//! flags override each of them.

use serde::Serialize;

/// A CPU rank (burn-flex, host memory) or a GPU rank (burn-cuda).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Cpu,
    Gpu,
}

/// One rank's device.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Hardware {
    pub name: String,
    pub kind: Kind,
    /// Dense bf16 tensor-core FLOP/s (GPU), or measured f32 matmul FLOP/s of the whole host (CPU).
    pub peak_flops: f64,
    /// Memory per rank (GPU memory as nvidia-smi reports it); `None` for the host, which the
    /// caller measures.
    pub memory: Option<u64>,
    /// Bytes/s one rank moves to its ring neighbour inside a node (NVLink or PCIe, one direction).
    pub intra_node_bandwidth: f64,
    /// Bytes/s per rank across nodes (its share of the network).
    pub inter_node_bandwidth: f64,
}

const MIB: u64 = 1 << 20;

struct Preset {
    name: &'static str,
    kind: Kind,
    peak_flops: f64,
    memory_mib: u64,
    intra: f64,
    inter: f64,
}

/// Datasheet peaks (dense, no sparsity); memory as nvidia-smi reports it; NVLink per direction
/// (A100: NVLink 3, 600 GB/s both ways; H100/H200: NVLink 4, 900 GB/s both ways; L40S: PCIe 4
/// x16); network: one 200 Gb/s (A100, L40S) or 400 Gb/s (H100, H200) InfiniBand port per GPU, as
/// in NVIDIA's DGX systems. `cpu` is this machine: 224 GFLOP/s measured for a 2048x512x1408 f32
/// matmul with OpenBLAS on 2 threads, about 5 GB/s for an MPI all-gather (see DESIGN.md), and
/// an assumed 10 Gb/s Ethernet between hosts.
const PRESETS: [Preset; 6] = [
    Preset { name: "a100-40gb", kind: Kind::Gpu, peak_flops: 312e12, memory_mib: 40960, intra: 300e9, inter: 25e9 },
    Preset { name: "a100-80gb", kind: Kind::Gpu, peak_flops: 312e12, memory_mib: 81920, intra: 300e9, inter: 25e9 },
    Preset { name: "h100-80gb", kind: Kind::Gpu, peak_flops: 989e12, memory_mib: 81559, intra: 450e9, inter: 50e9 },
    Preset { name: "h200", kind: Kind::Gpu, peak_flops: 989e12, memory_mib: 143771, intra: 450e9, inter: 50e9 },
    Preset { name: "l40s", kind: Kind::Gpu, peak_flops: 362e12, memory_mib: 46068, intra: 32e9, inter: 25e9 },
    Preset { name: "cpu", kind: Kind::Cpu, peak_flops: 224e9, memory_mib: 0, intra: 5e9, inter: 1.25e9 },
];

/// The names `Hardware::preset` knows.
pub fn preset_names() -> Vec<&'static str> {
    PRESETS.iter().map(|p| p.name).collect()
}

impl Hardware {
    /// A preset by name (case-insensitive), or `None`.
    pub fn preset(name: &str) -> Option<Self> {
        PRESETS.iter().find(|p| p.name.eq_ignore_ascii_case(name)).map(|p| Self {
            name: p.name.to_owned(),
            kind: p.kind,
            peak_flops: p.peak_flops,
            memory: (p.memory_mib > 0).then_some(p.memory_mib * MIB),
            intra_node_bandwidth: p.intra,
            inter_node_bandwidth: p.inter,
        })
    }

    /// This machine's CPU backend.
    pub fn cpu() -> Self {
        Self::preset("cpu").expect("a preset")
    }

    /// The bandwidth of a ring over `gpus` ranks spread on nodes of `per_node`: the slowest link.
    pub fn ring_bandwidth(&self, gpus: usize, per_node: usize) -> f64 {
        if gpus > per_node { self.inter_node_bandwidth.min(self.intra_node_bandwidth) } else { self.intra_node_bandwidth }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_by_name() {
        let a100 = Hardware::preset("A100-80GB").unwrap();
        assert_eq!(a100.memory, Some(80 << 30));
        assert_eq!(a100.kind, Kind::Gpu);
        assert!(Hardware::preset("v100").is_none());
        assert_eq!(Hardware::cpu().memory, None);
        assert_eq!(a100.ring_bandwidth(8, 8), 300e9);
        assert_eq!(a100.ring_bandwidth(16, 8), 25e9);
    }
}
