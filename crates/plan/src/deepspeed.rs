//! DeepSpeed's published estimate of ZeRO-3 model-state memory, for comparison.
//!
//! `estimate_zero3_model_states_mem_needs_all_live(model, num_gpus_per_node, num_nodes)` in
//! deepspeed/runtime/zero/stage3.py (microsoft/DeepSpeed, read at commit 38327e07, Feb 2025)
//! counts `total_params` and `largest_layer_params` (the most parameters held directly by one
//! module, `model_to_params`) and prints `estimate_zero3_model_states_mem_needs(...)` for each
//! offload option. Without offload (`cpu_offload=False`) that is
//!
//! ```text
//! gpu_mem = largest_layer_memory + int(18 * total_params / total_gpus)
//! largest_layer_memory = 4 * largest_layer_params
//! ```
//!
//! 18 bytes per parameter is a 16-bit parameter (2), fp32 master, Adam m and v (12) and a 32-bit
//! gradient shard (4), as in our bf16 design; `4 * largest_layer_params` is the largest module
//! gathered with its 16-bit gradient.

use shard_model::{MistralConfig, all_params, param_count};

/// `gpu_mem` of `estimate_zero3_model_states_mem_needs` without offload, in bytes.
pub fn zero3_model_states_gpu_bytes(total_params: u64, largest_layer_params: u64, total_gpus: u64) -> u64 {
    4 * largest_layer_params + (18 * total_params) / total_gpus
}

/// `model_to_params` for a Mistral model in transformers: every module that holds parameters
/// directly (the embedding, each projection, each RMSNorm, lm_head) holds exactly one tensor.
pub fn model_to_params(cfg: &MistralConfig) -> (u64, u64) {
    let largest = all_params(cfg).iter().map(|p| p.numel() as u64).max().unwrap_or(0);
    (param_count(cfg), largest)
}
