//! `[runtime]`: the device, the collectives' time limits and dtype, the memory limit the plan
//! checks, and how the ranks shard the model.

use serde::{Deserialize, Serialize};

use super::invalid::{Check, invalid};
use shard_core::{AttentionPath, Dtype};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeSection {
    pub device: Device,
    /// Seconds a collective call may wait for the other ranks once training runs, before the
    /// watchdog ends the job (see docs/saves-and-faults.md).
    pub timeout_s: u64,
    /// The same during start-up (config, plan, data cache, weights), when one rank may tokenize
    /// the dataset while the others wait.
    pub startup_timeout_s: u64,
    /// A GPU preset of the planner (`a100-80gb`, ...): its memory is the limit the plan checks
    /// before training, its peak FLOP/s and links time the plan.
    pub gpu: Option<String>,
    /// The memory each GPU may use (`80GB`, `80GiB`); overrides the preset's.
    pub gpu_memory: Option<String>,
    /// What gradients are reduce-scattered in: f32 (FSDP2's `reduce_dtype=float32`, exact sums)
    /// or bf16 (half the traffic, each rank's contribution rounded to bf16 first).
    pub reduce_dtype: Dtype,
    /// How shards move between ranks: `"nccl"` (cuda's default) or `"mpi"` (through host
    /// buffers; the only choice on the CPU and on wgpu, and a fallback on cuda).
    pub collectives: Option<Collectives>,
    /// Ranks that shard one copy of the model together (hybrid sharding): a number of
    /// consecutive ranks, or `"node"`; default every rank (ZeRO-3). Checked against the world at
    /// start-up.
    pub shard_size: Option<ShardSize>,
    /// `optimizer`: the trained parts' f32 masters, Adam states and gradient shards in host
    /// memory, the AdamW step on the host; the device keeps their compute-dtype copy.
    pub offload: Offload,
    /// `"fused"` (FlashAttention-2: no [seq, seq] scores; the default) or `"eager"` (the scores
    /// materialised, as transformers' eager attention: the reference to compare with). bf16 on
    /// the CPU attends eagerly either way (`shard_kernels::fused_attention`).
    pub attention: AttentionPath,
    /// Whether f32 matmuls on cuda and wgpu may run as TF32 on tensor cores (10-bit mantissas,
    /// GPUs that have them: Ampere and later). Off (the default), they are IEEE f32, as PyTorch's
    /// are by default (`shard_kernels::matmul`). The CPU has no TF32: there it changes nothing.
    pub tf32: bool,
}

/// `runtime.offload`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Offload {
    #[default]
    None,
    Optimizer,
}

/// `runtime.shard_size`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(untagged, expecting = "a number of ranks or \"node\"")]
pub enum ShardSize {
    Ranks(usize),
    Node(NodeKeyword),
}

/// The word `"node"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeKeyword {
    Node,
}

impl Default for RuntimeSection {
    fn default() -> Self {
        Self {
            device: Device::Cpu,
            timeout_s: 1800,
            startup_timeout_s: 7200,
            gpu: None,
            gpu_memory: None,
            reduce_dtype: Dtype::default(),
            collectives: None,
            shard_size: None,
            offload: Offload::None,
            attention: AttentionPath::Fused,
            tf32: false,
        }
    }
}

impl RuntimeSection {
    /// `gpu_memory` in bytes (validated at load).
    pub fn gpu_memory_bytes(&self) -> Option<u64> {
        self.gpu_memory.as_deref().and_then(|s| shard_plan::parse_size(s).ok())
    }

    pub(super) fn validate(&self) -> Check {
        if self.device == Device::Cpu && (self.gpu.is_some() || self.gpu_memory.is_some()) {
            let key = if self.gpu.is_some() { "runtime.gpu" } else { "runtime.gpu_memory" };
            return invalid(
                key,
                "applies to runtime.device = \"cuda\" or \"wgpu\"; on the CPU the plan checks the host's available memory",
            );
        }
        if self.collectives == Some(Collectives::Nccl) && self.device != Device::Cuda {
            return invalid(
                "runtime.collectives",
                format!("= \"nccl\" needs runtime.device = \"cuda\" (found \"{}\"): use \"mpi\"", self.device.name()),
            );
        }
        // burn-wgpu has no bf16: a cast to it would fail on the device's thread, not here.
        if self.device == Device::Wgpu && self.reduce_dtype == Dtype::Bf16 {
            return invalid("runtime.reduce_dtype", WGPU_HAS_NO_BF16);
        }
        if let Some(gpu) = self.gpu.as_ref().filter(|g| shard_plan::Hardware::preset(g).is_none_or(|h| h.kind != shard_plan::Kind::Gpu)) {
            let known: Vec<_> = shard_plan::preset_names().into_iter().filter(|n| *n != "cpu").collect();
            return invalid("runtime.gpu", format!("= {gpu:?} is not a known GPU (expected one of {known:?})"));
        }
        if let Some(Err(e)) = self.gpu_memory.as_deref().map(shard_plan::parse_size) {
            return invalid("runtime.gpu_memory", e.to_string());
        }
        for (key, seconds) in [("runtime.timeout_s", self.timeout_s), ("runtime.startup_timeout_s", self.startup_timeout_s)] {
            if seconds == 0 {
                return invalid(key, "must be at least 1 (seconds)");
            }
        }
        if self.shard_size == Some(ShardSize::Ranks(0)) {
            return invalid("runtime.shard_size", "= 0: a shard group needs at least 1 rank (or \"node\": the ranks of a node)");
        }
        Ok(())
    }
}

/// Why a bf16 dtype is refused on wgpu.
pub(super) const WGPU_HAS_NO_BF16: &str = "= \"bf16\" is not available on runtime.device = \"wgpu\" (burn-wgpu has no bf16): use \"f32\"";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Device {
    #[default]
    Cpu,
    Cuda,
    /// burn-wgpu (Vulkan, Metal): AMD, Intel and Apple GPUs, and Mesa's lavapipe on the CPU.
    Wgpu,
}

impl Device {
    /// Its name in the run config.
    pub fn name(self) -> &'static str {
        match self {
            Device::Cpu => "cpu",
            Device::Cuda => "cuda",
            Device::Wgpu => "wgpu",
        }
    }
}

/// `runtime.collectives`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Collectives {
    Nccl,
    Mpi,
}
