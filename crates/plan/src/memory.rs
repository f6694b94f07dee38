//! Per-rank memory by category: the model states each rank keeps (exact, as the engine's
//! ledger counts them), then a replay of one micro-batch's schedule (forward unit by unit,
//! the head's forward and backward, the layers' recompute and backward, the embedding's
//! backward) that finds the most held at once.
//!
//! `gathered` follows the engine's ledger exactly (`shard_zero::Category::Gathered`): a unit's
//! parts at full padded size while it runs (a QLoRA layer's NF4 records from its gather until
//! they are dequantized, then its projections in the compute dtype), plus in backward the
//! full-size gradient of its largest trainable part from its reduce-scatter's start until the
//! next unit's reduce-scatter starts (the engine keeps one in flight while the next unit
//! recomputes). The CPU replay also counts what the ledger does not see: the host copies MPI
//! sends from and receives into, and the gradients before they are flattened.

use serde::Serialize;

use crate::activations::Shapes;
use crate::units::Unit;
use crate::{Dtype, Job, Kind, Mode};

/// Assumed: bytes per weight of the largest projection held by the dequantization's temporaries
/// (the codes as indices, the levels of both nibbles, the absmax per weight, their f32 product).
pub const DEQUANTIZE_TEMP_BYTES: u64 = 12;

/// A CPU rank's resident memory besides the engine's buffers: the binary, its libraries, the
/// MPI runtime and small allocations. Measured with `benches/plan_rss.sh calibrate`: the tiny
/// fixture's peak RSS less its planned engine bytes was 29-35 MiB on the 7 ranks of worlds 1, 2
/// and 4 (mean 32.6).
pub const CPU_PROCESS_BYTES: u64 = 33 << 20;

/// Assumed: a CUDA context with cuBLAS workspaces.
pub const CUDA_CONTEXT_BYTES: u64 = 1 << 30;

/// Assumed: NCCL's channel buffers, when there is more than one rank.
pub const NCCL_BYTES: u64 = 512 << 20;

/// What one rank holds at its peak, by category.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct PerRank {
    /// The rank's slice of every frozen part in the compute dtype (NF4 for a QLoRA base).
    pub compute_shards: u64,
    /// f32 master shards of the trained parts: what AdamW updates, cast to the compute dtype
    /// before each all-gather (no persistent low-precision copy, as FSDP2).
    pub master: u64,
    /// AdamW m and v in f32.
    pub optimizer: u64,
    /// f32 gradient shards, summed over micro-batches.
    pub grads: u64,
    /// Units gathered to full size (current and prefetched), and in backward the full-size
    /// gradient of the unit being reduce-scattered.
    pub gathered: u64,
    /// Layer checkpoints, the recompute of one layer, hidden states and their gradients.
    pub activations: u64,
    /// The lm_head output and the loss's f32 tensors.
    pub logits: u64,
    /// Collective buffers and parameter gradients before they are flattened.
    pub buffers: u64,
    /// Runtime: process, CUDA context, NCCL, allocator slack (assumed, see the plan's notes).
    pub overhead: u64,
    /// The most held at once. Each category above is its own peak over the step, so their sum
    /// can exceed this.
    pub total: u64,
}

impl PerRank {
    /// Compute shards, masters, optimizer states and gradient shards: what the engine's ledger
    /// reports as `model_state_bytes`.
    pub fn model_states(&self) -> u64 {
        self.compute_shards + self.master + self.optimizer + self.grads
    }
}

/// The memory part of a plan.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Memory {
    pub per_rank: PerRank,
    /// Where in the step the total is reached.
    pub peak_at: &'static str,
}

/// Bytes held at one moment of the step, besides the model states and the overhead.
#[derive(Debug, Clone, Copy, Default)]
struct Held {
    gathered: u64,
    activations: u64,
    logits: u64,
    buffers: u64,
}

impl Held {
    fn total(&self) -> u64 {
        self.gathered + self.activations + self.logits + self.buffers
    }

    fn plus(self, other: Held) -> Held {
        Held {
            gathered: self.gathered + other.gathered,
            activations: self.activations + other.activations,
            logits: self.logits + other.logits,
            buffers: self.buffers + other.buffers,
        }
    }
}

pub fn memory(job: &Job, units: &[Unit]) -> Memory {
    let sizes = Sizes { elem: job.precision.bytes() as u64, reduce_elem: job.reduce.bytes() as u64, cpu: job.hardware.kind == Kind::Cpu };
    let mut per_rank = PerRank::default();
    for part in units.iter().flat_map(|u| &u.parts) {
        if part.trainable {
            per_rank.master += part.shard * 4;
            per_rank.optimizer += part.shard * 8;
            per_rank.grads += part.shard * 4;
        } else {
            per_rank.compute_shards += part.bytes(part.shard, sizes.elem);
        }
    }
    per_rank.overhead = overhead(job, units, &sizes);

    let moments = replay(job, units, &sizes, &Shapes::new(job));
    let (peak_at, peak) = moments.iter().max_by_key(|(_, held)| held.total()).map(|(l, h)| (*l, h.total())).unwrap_or(("", 0));
    for (_, held) in &moments {
        per_rank.gathered = per_rank.gathered.max(held.gathered);
        per_rank.activations = per_rank.activations.max(held.activations);
        per_rank.logits = per_rank.logits.max(held.logits);
        per_rank.buffers = per_rank.buffers.max(held.buffers);
    }
    per_rank.total = per_rank.model_states() + per_rank.overhead + peak;
    Memory { per_rank, peak_at }
}

/// Byte sizes of a unit's buffers.
struct Sizes {
    /// Bytes per element in the compute dtype.
    elem: u64,
    /// Bytes per element of the gradients that are reduce-scattered.
    reduce_elem: u64,
    cpu: bool,
}

impl Sizes {
    /// A unit as its gather brings it: its parts at full padded size, NF4 records as such.
    fn gathered(&self, unit: &Unit) -> u64 {
        unit.parts.iter().map(|p| p.bytes(p.padded, self.elem)).sum()
    }

    /// A unit while it runs: its NF4 records dequantized to the compute dtype (and released).
    fn running(&self, unit: &Unit) -> u64 {
        unit.parts.iter().map(|p| if p.nf4 { p.numel * self.elem } else { p.padded * self.elem }).sum()
    }

    /// A unit while its NF4 records are dequantized: both forms; `None` without NF4.
    fn dequantizing(&self, unit: &Unit) -> Option<u64> {
        unit.parts
            .iter()
            .any(|p| p.nf4)
            .then(|| self.gathered(unit) + unit.parts.iter().filter(|p| p.nf4).map(|p| p.numel * self.elem).sum::<u64>())
    }

    /// Every parameter of the unit as its own tensor.
    fn weights(&self, unit: &Unit) -> u64 {
        unit.numel() * self.elem
    }

    /// The full-size gradient the ledger counts while a unit is reduce-scattered.
    fn full_grads(&self, unit: &Unit) -> u64 {
        unit.largest_trainable_part() * self.reduce_elem
    }

    /// Held beside the ledger's full-size gradient while it is reduce-scattered: the parameter
    /// gradients it is concatenated from, and on the CPU the host copy MPI sends from (the
    /// receive buffer of the all-to-all and the summed shard come after these are freed, and
    /// are smaller).
    fn reduce_buffers(&self, unit: &Unit) -> u64 {
        let part = unit.parts.iter().filter(|p| p.trainable).max_by_key(|p| p.padded);
        part.map_or(0, |p| p.numel * self.elem + if self.cpu { p.padded * self.elem } else { 0 })
    }

    /// Held while the unit's reduce-scatter is in flight, after its start: the ledger's
    /// full-size gradient, and on the CPU the all-to-all's receive buffer.
    fn in_flight(&self, unit: &Unit) -> Held {
        let receive = if self.cpu { unit.largest_trainable_part() * self.reduce_elem } else { 0 };
        Held { gathered: self.full_grads(unit), buffers: receive, ..Held::default() }
    }
}

/// Allocator slack on the CPU, in largest unit-sized buffers: freed buffers that mimalloc keeps
/// resident (in f32 the binary never lets it purge them, `threads::set_allocator_purge`) but cannot
/// reuse for the sizes asked next. Chosen on `benches/plan_rss.sh` (burn-flex, small and medium
/// presets, f32, worlds 1, 2 and 4: peak RSS less the process and the replayed peak) once the
/// layers' weights became views of the gathered buffers instead of copies (it was 3.3 with the
/// copies); see docs/planner.md for the errors it leaves.
pub const CPU_SLACK_UNITS: f64 = 2.5;

/// The same slack when the base is frozen (LoRA, QLoRA): a unit's backward then frees its
/// gathered (or dequantized) weights but no full-size gradients of them, so less is left behind.
/// Chosen on `MODE=lora` and `MODE=qlora benches/plan_rss.sh` (the same presets and worlds: 0.2
/// to 2.4 such buffers, most ranks 0.6 to 1.5).
pub const CPU_FROZEN_BASE_SLACK_UNITS: f64 = 0.75;

/// The CPU slack of `job`'s mode, in largest unit-sized buffers.
pub(crate) fn cpu_slack_units(job: &Job) -> f64 {
    match job.mode {
        Mode::Full => CPU_SLACK_UNITS,
        Mode::Lora(_) | Mode::Qlora(_) => CPU_FROZEN_BASE_SLACK_UNITS,
    }
}

/// With more than one rank, MPI's host buffers besides the ledger's: the prefetched gather's
/// receive buffer, and the all-to-all's send and receive buffers of a reduce-scatter, in largest
/// unit-sized buffers. Chosen on `benches/plan_rss.sh` (small and medium presets, f32, worlds 2
/// and 4: 0 to 1 such buffers above the world-1 slack since receive buffers are not zeroed and
/// AdamW and the loss leave no temporaries; 0.5 puts every rank within -5.4% to +4.1%, see
/// docs/planner.md). None in bf16, whose freed buffers go back to the OS (measured: 0 to 0.5
/// such buffers at worlds 2 and 4).
pub const CPU_MPI_BUFFER_UNITS: f64 = 0.5;

/// MPI's host buffers a CPU rank keeps resident, in largest unit-sized buffers.
pub(crate) fn cpu_mpi_buffer_units(job: &Job) -> f64 {
    if job.gpus > 1 && job.precision == Dtype::F32 { CPU_MPI_BUFFER_UNITS } else { 0.0 }
}

/// Assumed allocator slack on a GPU (a caching allocator's fragmentation), in the same buffers.
pub const GPU_SLACK_UNITS: u64 = 1;

/// The runtime's share: measured for the CPU process, assumed for CUDA and NCCL; plus allocator
/// slack in multiples of the largest unit-sized buffer.
fn overhead(job: &Job, units: &[Unit], sizes: &Sizes) -> u64 {
    let largest = units.iter().map(|u| sizes.gathered(u).max(sizes.running(u))).max().unwrap_or(0);
    match job.hardware.kind {
        Kind::Cpu => CPU_PROCESS_BYTES + ((cpu_slack_units(job) + cpu_mpi_buffer_units(job)) * largest as f64) as u64,
        Kind::Gpu => CUDA_CONTEXT_BYTES + if job.gpus > 1 { NCCL_BYTES } else { 0 } + GPU_SLACK_UNITS * largest,
    }
}

/// The moments of one micro-batch, in the engine's order, with what each holds.
fn replay(job: &Job, units: &[Unit], sizes: &Sizes, shapes: &Shapes) -> Vec<(&'static str, Held)> {
    let n = units.len();
    let (embedding, head) = (&units[0], &units[n - 1]);
    let layers = n - 2;
    let prefetch = |unit: Option<&Unit>| match unit {
        Some(u) if job.assumptions.prefetch => sizes.gathered(u),
        _ => 0,
    };
    let hidden = shapes.hidden_state();
    let mut moments = Vec::new();

    // Forward without autodiff: the embedding, then each layer after checkpointing its input.
    for (i, unit) in units[..n - 1].iter().enumerate() {
        let next = prefetch(units.get(i + 1));
        let checkpoints = i as u64 * hidden;
        let send_copy = if sizes.cpu { unit.parts.iter().map(|p| p.bytes(p.shard, sizes.elem)).sum() } else { 0 };
        let gathered = sizes.gathered(unit) + next;
        moments.push(("forward: all-gather", Held { gathered, activations: checkpoints, buffers: send_copy, ..Held::default() }));
        if let Some(both) = sizes.dequantizing(unit) {
            let temps = DEQUANTIZE_TEMP_BYTES * unit.largest_param;
            moments.push((
                "forward: NF4 dequantize",
                Held { gathered: both + next, activations: checkpoints, buffers: temps, ..Held::default() },
            ));
        }
        let gathered = sizes.running(unit) + next;
        let working = if i == 0 { hidden } else { hidden + shapes.layer_forward() };
        let label = if i == 0 { "forward: embedding" } else { "forward: decoder layer" };
        moments.push((label, Held { gathered, activations: checkpoints + working, ..Held::default() }));
    }

    // The head: forward and backward with autodiff, every checkpoint still held.
    let base = Held {
        gathered: sizes.gathered(head) + if layers > 0 { prefetch(units.get(n - 2)) } else { 0 },
        activations: layers as u64 * hidden + 3 * hidden,
        ..Held::default()
    };
    let lm_head = Held { logits: shapes.logits_forward(), ..base };
    moments.push(("head: lm_head", lm_head));
    moments.push(("head: loss and its backward", Held { logits: shapes.logits_loss(), ..base }));
    if sizes.cpu && sizes.elem == 2 {
        moments.push(("head: lm_head backward (bf16 through f32 on CPU)", Held { logits: shapes.cpu_bf16_lm_head_backward(), ..base }));
    }
    // The reduce-scatter in flight while the next unit runs.
    let mut in_flight = Held::default();
    if head.is_trainable() {
        let gathered = base.gathered + sizes.full_grads(head);
        moments.push(("head: reduce-scatter", Held { gathered, buffers: base.buffers + sizes.reduce_buffers(head), ..base }));
        in_flight = sizes.in_flight(head);
    }

    // Backward through the layers, each recomputed from its checkpoint.
    for j in (0..layers).rev() {
        let unit = &units[1 + j];
        let before = if j > 0 { Some(&units[j]) } else { Some(embedding).filter(|e| e.is_trainable()) };
        let base =
            Held { gathered: sizes.running(unit) + prefetch(before), activations: (j as u64 + 1) * hidden + hidden, ..Held::default() };
        if let Some(both) = sizes.dequantizing(unit) {
            let temps = DEQUANTIZE_TEMP_BYTES * unit.largest_param;
            moments.push(("backward: NF4 dequantize", Held { gathered: both + prefetch(before), buffers: temps, ..base }.plus(in_flight)));
        }
        let recompute = shapes.layer_recompute() + hidden;
        moments.push(("backward: decoder layer recompute", Held { activations: base.activations + recompute, ..base }.plus(in_flight)));
        if unit.is_trainable() {
            let gathered = base.gathered + sizes.full_grads(unit);
            moments.push((
                "backward: decoder layer reduce-scatter",
                Held { gathered, buffers: base.buffers + sizes.reduce_buffers(unit), ..base },
            ));
            in_flight = sizes.in_flight(unit);
        }
    }

    // The embedding's backward, when it is trained (LoRA does not gather it again).
    if embedding.is_trainable() {
        let base = Held { gathered: sizes.gathered(embedding), activations: 2 * hidden, ..Held::default() };
        // The lookup's backward scatters into a zeroed [vocab, hidden] gradient.
        let scatter = sizes.weights(embedding);
        moments.push(("backward: embedding", Held { buffers: base.buffers + scatter, ..base }.plus(in_flight)));
        let gathered = base.gathered + sizes.full_grads(embedding);
        moments.push((
            "backward: embedding reduce-scatter",
            Held { gathered, buffers: base.buffers + sizes.reduce_buffers(embedding), ..base },
        ));
    }
    moments
}
