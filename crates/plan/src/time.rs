//! Time and cost: FLOPs per token from the shapes (6 x parameters for full fine-tuning, plus
//! attention, plus the recompute of every layer), step time at an assumed MFU, and the ZeRO-3
//! traffic (every unit all-gathered for forward and again for backward, every trainable part
//! reduce-scattered: about 3x the model's bytes per micro-batch) over the ring's slowest link.

use serde::Serialize;
use shard_model::{Block, projection_shape};

use crate::units::Unit;
use crate::{Job, Kind, Mode, Optimizer, offload};

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Time {
    /// FLOPs per trained token: forward, recompute and backward.
    pub flops_per_token: f64,
    pub tokens_per_step: u64,
    /// Per optimizer step.
    pub compute_seconds: f64,
    /// Bytes each rank receives (all-gathers) and sends (reduce-scatters) per optimizer step.
    pub comm_bytes_per_step: u64,
    pub comm_seconds: f64,
    /// The part of the communication that the compute does not hide.
    pub exposed_comm_seconds: f64,
    /// With offload, per step: the gradient shard to the host and the parameters back over
    /// PCIe, and the AdamW step on the host (not overlapped with the device's work).
    pub offload_seconds: f64,
    pub step_seconds: f64,
    pub tokens_per_s: f64,
    /// For the whole dataset (examples x epochs), when its size is known.
    pub hours: Option<f64>,
    /// hours x GPUs x price, when the price is known.
    pub cost: Option<f64>,
}

pub fn time(job: &Job, units: &[Unit]) -> Time {
    let flops_per_token = flops_per_token(job);
    let tokens_per_micro_batch = job.tokens_per_micro_batch();
    let micro_batches = job.grad_accum as f64;
    // CPU ranks on one host share its cores.
    let local_ranks = match job.hardware.kind {
        Kind::Cpu => job.gpus.min(job.gpus_per_node) as f64,
        Kind::Gpu => 1.0,
    };
    let flops_per_s = job.hardware.peak_flops(job.precision) * job.assumptions.mfu / local_ranks;
    let compute_micro = tokens_per_micro_batch as f64 * flops_per_token / flops_per_s;

    let world = job.gpus as f64;
    let wire = |u: &Unit| -> f64 { u.parts.iter().map(|p| p.bytes(p.padded, job.precision.bytes() as u64) as f64).sum() };
    let (n, embedding) = (units.len(), &units[0]);
    let gathered_forward: f64 = units.iter().map(wire).sum();
    let gathered_backward: f64 =
        units[1..n - 1].iter().map(wire).sum::<f64>() + if embedding.is_trainable() { wire(embedding) } else { 0.0 };
    let scattered: f64 =
        units.iter().flat_map(|u| &u.parts).filter(|p| p.trainable).map(|p| (p.padded * (job.reduce.bytes() as u64)) as f64).sum();
    let moved = if job.gpus > 1 { (gathered_forward + gathered_backward + scattered) * (world - 1.0) / world } else { 0.0 };
    let comm_micro = moved / job.hardware.ring_bandwidth(job.gpus, job.gpus_per_node);
    // With prefetch, each gather overlaps the previous unit's compute; the first cannot.
    let exposed_micro = if job.assumptions.prefetch {
        let first = wire(embedding) * (world - 1.0) / world / job.hardware.ring_bandwidth(job.gpus, job.gpus_per_node);
        (comm_micro - compute_micro).max(0.0).max(if job.gpus > 1 { first } else { 0.0 })
    } else {
        comm_micro
    };

    let offload_seconds = if job.offload { offload_seconds(job, units) } else { 0.0 };
    let step_seconds = (compute_micro + exposed_micro) * micro_batches + offload_seconds;
    let tokens_per_step = tokens_per_micro_batch * job.grad_accum as u64 * job.gpus as u64;
    let tokens_per_s = tokens_per_step as f64 / step_seconds;
    let hours = job.sequences.map(|s| s * job.seq_len as f64 / tokens_per_s / 3600.0);
    Time {
        flops_per_token,
        tokens_per_step,
        compute_seconds: compute_micro * micro_batches,
        comm_bytes_per_step: (moved * micro_batches) as u64,
        comm_seconds: comm_micro * micro_batches,
        exposed_comm_seconds: exposed_micro * micro_batches,
        offload_seconds,
        step_seconds,
        tokens_per_s,
        hours,
        cost: hours.zip(job.price_per_gpu_hour).map(|(h, price)| h * job.gpus as f64 * price),
    }
}

/// A rank's per-step offload time: its trained shard over PCIe, and its share of the node's host
/// memory bandwidth for the AdamW step.
fn offload_seconds(job: &Job, units: &[Unit]) -> f64 {
    let trained: u64 = units.iter().flat_map(|u| &u.parts).filter(|p| p.trainable).map(|p| p.shard).sum();
    let pcie = (trained * offload::pcie_bytes_per_element(job.precision.bytes() as u64)) as f64 / offload::PCIE_BANDWIDTH;
    let ranks_on_node = job.gpus.min(job.gpus_per_node) as f64;
    let host_step = trained as f64 * offload::host_step_bytes_per_element(job.optimizer == Optimizer::AdamW8bit)
        / (offload::HOST_MEMORY_BANDWIDTH / ranks_on_node);
    pcie + host_step
}

/// FLOPs per token of one optimizer step. A matmul with a weight costs 2 FLOPs per weight per
/// token forward and 4 backward (input and weight gradients); a frozen weight needs only the
/// input gradient (2). Every layer runs forward twice (the recompute); the head once.
/// Attention's scores and weighted sum cost 4 x keys x q_width per token and layer forward, for
/// the keys a query meets: eager attention computes every score (seq keys); the fused kernel
/// only those a query sees, causally within the sliding window (seq / 2 without one). Backward
/// costs twice the forward for eager attention (4 products of the forward's 2), 2.5 times for
/// the fused kernel (5: it recomputes the scores).
pub fn flops_per_token(job: &Job) -> f64 {
    let cfg = &job.model;
    let layer_weights: f64 = Block::Layer(0).params(cfg).iter().filter(|p| p.shape.len() == 2).map(|p| p.numel() as f64).sum();
    let head_weights = (cfg.vocab_size * cfg.hidden_size) as f64;
    let q_width = (cfg.num_attention_heads * cfg.head_dim) as f64;
    let (keys, backward) = if job.assumptions.fused_attention { (keys_seen(job), 2.5) } else { (job.seq_len as f64, 2.0) };
    let attention = 4.0 * keys * q_width;
    let (weight_backward, adapters) = match &job.mode {
        Mode::Full => (4.0, 0.0),
        Mode::Lora(l) | Mode::Qlora(l) => {
            let adapter_weights: f64 = l
                .targeted()
                .map(|p| {
                    let [out, input] = projection_shape(cfg, p);
                    (l.r * (out + input)) as f64
                })
                .sum();
            (2.0, adapter_weights)
        }
    };
    let per_layer = 2.0 * (2.0 * layer_weights + attention) // forward and recompute
        + weight_backward * layer_weights + backward * attention
        + 8.0 * adapters;
    cfg.num_hidden_layers as f64 * per_layer + (2.0 + weight_backward) * head_weights
}

/// The mean number of keys a query of a `seq_len` sequence sees: min(i + 1, window) for query i.
fn keys_seen(job: &Job) -> f64 {
    let seq = job.seq_len as f64;
    match job.model.sliding_window.map(|w| w as f64) {
        Some(window) if window < seq => (window * (window + 1.0) / 2.0 + (seq - window) * window) / seq,
        _ => (seq + 1.0) / 2.0,
    }
}
