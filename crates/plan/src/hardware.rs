//! What a rank runs on: peak dense FLOP/s per compute dtype, memory and link bandwidths of common
//! GPUs, and a 2-core CPU running burn-flex. Every figure is nominal (datasheet or measured, as noted);
//! flags override each of them.

use serde::Serialize;

use crate::Dtype;

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
    pub peak_bf16_flops: f64,
    /// Dense f32 FLOP/s without tensor cores (GPU), or the host's measured f32 FLOP/s (CPU).
    pub peak_f32_flops: f64,
    /// Dense TF32 tensor-core FLOP/s, on GPUs that have them: f32 matmuls reach it only when
    /// their kernels use TF32 (PyTorch's default does not), so plans in f32 use `peak_f32_flops`.
    pub peak_tf32_flops: Option<f64>,
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
    bf16: f64,
    f32: f64,
    tf32: f64,
    memory_mib: u64,
    intra: f64,
    inter: f64,
}

/// Datasheet peaks (dense, no sparsity; tf32 0 where there is none); memory as nvidia-smi
/// reports it; NVLink per direction (A100: NVLink 3, 600 GB/s both ways; H100/H200: NVLink 4, 900 GB/s both ways; L40S: PCIe 4
/// x16); network: one 200 Gb/s (A100, L40S) or 400 Gb/s (H100, H200) InfiniBand port per GPU, as
/// in NVIDIA's DGX systems. `cpu` is a 2-core x86 machine: 224 GFLOP/s measured for a 2048x512x1408 f32
/// matmul with OpenBLAS on 2 threads, about 5 GB/s for an MPI all-gather (see docs/design.md), and
/// an assumed 10 Gb/s Ethernet between hosts.
const PRESETS: [Preset; 6] = [
    Preset { name: "a100-40gb", kind: Kind::Gpu, bf16: 312e12, f32: 19.5e12, tf32: 156e12, memory_mib: 40960, intra: 300e9, inter: 25e9 },
    Preset { name: "a100-80gb", kind: Kind::Gpu, bf16: 312e12, f32: 19.5e12, tf32: 156e12, memory_mib: 81920, intra: 300e9, inter: 25e9 },
    Preset { name: "h100-80gb", kind: Kind::Gpu, bf16: 989e12, f32: 67e12, tf32: 494.7e12, memory_mib: 81559, intra: 450e9, inter: 50e9 },
    Preset { name: "h200", kind: Kind::Gpu, bf16: 989e12, f32: 67e12, tf32: 494.7e12, memory_mib: 143771, intra: 450e9, inter: 50e9 },
    Preset { name: "l40s", kind: Kind::Gpu, bf16: 362e12, f32: 91.6e12, tf32: 183e12, memory_mib: 46068, intra: 32e9, inter: 25e9 },
    Preset { name: "cpu", kind: Kind::Cpu, bf16: 224e9, f32: 224e9, tf32: 0.0, memory_mib: 0, intra: 5e9, inter: 1.25e9 },
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
            peak_bf16_flops: p.bf16,
            peak_f32_flops: p.f32,
            peak_tf32_flops: (p.tf32 > 0.0).then_some(p.tf32),
            memory: (p.memory_mib > 0).then_some(p.memory_mib * MIB),
            intra_node_bandwidth: p.intra,
            inter_node_bandwidth: p.inter,
        })
    }

    /// The peak FLOP/s of compute in `precision`.
    pub fn peak_flops(&self, precision: Dtype) -> f64 {
        match precision {
            Dtype::Bf16 => self.peak_bf16_flops,
            Dtype::F32 => self.peak_f32_flops,
        }
    }

    /// The `cpu` preset: a 2-core machine on burn-flex.
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
        assert_eq!((a100.peak_flops(Dtype::Bf16), a100.peak_flops(Dtype::F32)), (312e12, 19.5e12));
    }
}
