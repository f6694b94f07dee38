//! Plans as text for people (a table per plan, or one comparison table) and as JSON for tools.

use serde_json::json;
use shard_core::counted;
use shard_model::{Block, MistralConfig, param_count, trainable_param_count};

use crate::memory::{CPU_PROCESS_BYTES, CUDA_CONTEXT_BYTES, GPU_SLACK_UNITS, NCCL_BYTES, cpu_mpi_buffer_units, cpu_slack_units};
use crate::offload::{HOST_MEMORY_BANDWIDTH, HOST_MEMORY_PER_NODE, PCIE_BANDWIDTH};
use crate::plan::Levers;
use crate::{Dtype, Job, Kind, Mode, Optimizer, Plan, human};

/// `{"model", "assumptions", "strategies": [plan, ...]}`: one object per strategy.
pub fn json(job: &Job, plans: &[Plan]) -> String {
    let m = &job.model;
    let value = json!({
        "model": {
            "parameters": param_count(m),
            "layers": m.num_hidden_layers,
            "hidden_size": m.hidden_size,
            "vocab_size": m.vocab_size,
        },
        "assumptions": {
            "hardware": job.hardware,
            "precision": job.precision,
            "seq_len": job.seq_len,
            "grad_accum": job.grad_accum,
            "mfu": job.assumptions.mfu,
            "margin": job.assumptions.margin,
            "prefetch": job.assumptions.prefetch,
            "fused_attention": job.assumptions.fused_attention,
            "notes": notes(job, plans),
        },
        "strategies": plans,
    });
    serde_json::to_string_pretty(&value).expect("plans serialize")
}

/// A plan with every category, its time and cost, and the assumptions behind them.
pub fn table(job: &Job, plan: &Plan) -> String {
    let b = &plan.per_rank_bytes;
    let t = &plan.time;
    let e = job.precision.bytes() as u64;
    let dtype = if e == 2 { "bf16" } else { "f32" };
    let mut out = header(job, plan);
    let mut row = |name: &str, bytes: u64, what: String| out.push_str(&format!("  {name:<16}{:>10}   {what}\n", human(bytes)));
    let compute_what = match job.mode {
        Mode::Qlora(_) => format!("this rank's slice of the frozen base: NF4 projections, {dtype} elsewhere"),
        Mode::Lora(_) => format!("this rank's {dtype} slice of the frozen base"),
        Mode::Full if job.offload => format!("this rank's {dtype} slice of the trained parts (their f32 master is on the host)"),
        Mode::Full => "none: every part is trained (its slices are the f32 master)".into(),
    };
    row("compute shards", b.compute_shards, compute_what);
    let cast = if e == 2 { "cast to bf16 for each all-gather" } else { "gathered as they are" };
    row("f32 master", b.master, format!("this rank's slice of the trained parts, {cast}"));
    let states = match job.optimizer {
        Optimizer::AdamW => "f32, trainable parts",
        Optimizer::AdamW8bit => "AdamW8bit: 8-bit codes + an f32 absmax per 256 (f32 under 4,096 elements)",
    };
    row("Adam m, v", b.optimizer, states.into());
    row("grad shards", b.grads, "f32, trainable parts, summed over micro-batches".into());
    let prefetched = if job.assumptions.prefetch { " + the prefetched one" } else { ", one at a time (no prefetch)" };
    row("gathered", b.gathered, format!("the running unit{prefetched}, and its full-size grads in backward"));
    let attention = if job.assumptions.fused_attention { "fused attention" } else { "eager attention: [b, heads, s, s] scores" };
    row("activations", b.activations, format!("{} layer checkpoints + one layer's recompute ({attention})", job.model.num_hidden_layers));
    row(
        "logits",
        b.logits,
        format!("[{}, {}, {}] {dtype} logits + two f32 loss tensors", job.micro_batch, job.seq_len, job.model.vocab_size),
    );
    let buffers = if job.hardware.kind == Kind::Cpu {
        "MPI's host copies, grads before flattening"
    } else {
        "grads before flattening into the reduce-scatter buffer"
    };
    row("buffers", b.buffers, buffers.into());
    row("overhead", b.overhead, overhead_note(job));
    row("total", b.total, format!("the most held at once (at \"{}\"); categories peak at different moments", plan.peak_at));
    if let Some(node) = plan.host_bytes_per_node {
        row("host states", b.host_states, "offloaded: f32 master, Adam m and v, f32 grad shard, in host memory".into());
        let per_node = format!("{} of host memory per node, for its ranks (assumed {} a node)", human(node), human(HOST_MEMORY_PER_NODE));
        row("host per node", node, per_node);
    }
    match (plan.memory_limit_bytes, plan.fits) {
        (Some(limit), Some(fits)) => {
            let verdict = if fits { "fits" } else { "does NOT fit" };
            row("limit", limit, format!("{verdict} with a {:.0}% margin", job.assumptions.margin * 100.0));
            if !fits {
                out.push_str(NOT_FIT_HINT);
            }
        }
        _ => out.push_str("  limit                 -   no memory limit given: fit not judged\n"),
    }
    out.push_str(&format!(
        "time\n  FLOPs per token {:>10}   forward, recompute and backward (6 x params + attention + recompute)\n",
        flops(t.flops_per_token, "FLOP")
    ));
    out.push_str(&format!(
        "  step            {:>10}   compute {:.3} s at {:.0}% MFU of {}; communication {:.3} s ({} per rank), {:.3} s not hidden\n",
        format!("{:.3} s", t.step_seconds),
        t.compute_seconds,
        job.assumptions.mfu * 100.0,
        peak(job),
        t.comm_seconds,
        human(t.comm_bytes_per_step),
        t.exposed_comm_seconds,
    ));
    if job.offload {
        out.push_str(&format!(
            "  offload         {:>10}   per step: grad shard down and {dtype} shard up over PCIe ({:.0} GB/s), AdamW on the host ({:.0} GB/s a node)\n",
            format!("{:.3} s", t.offload_seconds),
            PCIE_BANDWIDTH / 1e9,
            HOST_MEMORY_BANDWIDTH / 1e9,
        ));
    }
    out.push_str(&format!(
        "  throughput      {:>10}   tokens/s, all ranks ({} tokens per step)\n",
        format!("{:.0}", t.tokens_per_s),
        t.tokens_per_step
    ));
    match (job.sequences, t.hours) {
        (Some(sequences), Some(hours)) => out.push_str(&format!(
            "  dataset         {:>10}   {} sequences of {} tokens\n",
            format!("{hours:.2} h"),
            crate::group_digits(sequences.round() as u64),
            job.seq_len
        )),
        _ => out.push_str("  dataset                 -   give --examples (and --epochs) for the run's duration\n"),
    }
    match (t.cost, job.price_per_gpu_hour) {
        (Some(cost), Some(price)) => {
            out.push_str(&format!("  cost            {:>10}   {} GPUs x ${price:.2} per GPU-hour\n", format!("${cost:.2}"), plan.gpus))
        }
        _ => out.push_str("  cost                    -   give --price-per-gpu-hour\n"),
    }
    out.push_str(&notes_block(job, std::slice::from_ref(plan)));
    out
}

/// One row per strategy: per-rank totals, the main categories, fit, speed and cost.
pub fn compare_table(job: &Job, plans: &[Plan]) -> String {
    let mut out = format!(
        "{} parameters, {} x {} tokens per micro-batch, {} {}; limit {} per {} with a {:.0}% margin\n\n",
        crate::group_digits(param_count(&job.model)),
        job.micro_batch,
        job.seq_len,
        job.hardware.name,
        if job.precision == Dtype::Bf16 { "bf16" } else { "f32" },
        job.memory_limit.map_or("none".into(), human),
        if job.hardware.kind == Kind::Gpu { "GPU" } else { "rank" },
        job.assumptions.margin * 100.0,
    );
    out.push_str(&format!(
        "{:<34}{:>10}{:>10}{:>10}{:>10}{:>10}{:>10}{:>10}  {:<5}{:>10}{:>9}{:>9}{:>12}\n",
        "strategy",
        "per rank",
        "states",
        "gathered",
        "activ.",
        "logits",
        "buffers",
        "overhead",
        "fits",
        "tokens/s",
        "hours",
        "cost",
        "DeepSpeed"
    ));
    for p in plans {
        let b = &p.per_rank_bytes;
        let fits = match p.fits {
            Some(true) => "yes",
            Some(false) => "NO",
            None => "?",
        };
        out.push_str(&format!(
            "{:<34}{:>10}{:>10}{:>10}{:>10}{:>10}{:>10}{:>10}  {:<5}{:>10.0}{:>9}{:>9}{:>12}\n",
            p.label,
            human(b.total),
            human(b.model_states()),
            human(b.gathered),
            human(b.activations),
            human(b.logits),
            human(b.buffers),
            human(b.overhead),
            fits,
            p.time.tokens_per_s,
            p.time.hours.map_or("-".into(), |h| format!("{h:.2}")),
            p.time.cost.map_or("-".into(), |c| format!("${c:.0}")),
            p.deepspeed_zero3_model_states_bytes.map_or("-".into(), human),
        ));
    }
    out.push_str(
        "\n`per rank` is the most held at once; the categories each peak at their own moment. `DeepSpeed` is\n\
         estimate_zero3_model_states_mem_needs_all_live without offload (4 x largest layer + 18 x params / GPUs),\n\
         to compare with `states` + `gathered`.\n",
    );
    out.push_str(&notes_block(job, plans));
    out
}

fn header(job: &Job, plan: &Plan) -> String {
    let device = match job.hardware.kind {
        Kind::Cpu => counted(plan.gpus, "CPU rank"),
        Kind::Gpu => format!("{} {}", plan.gpus, job.hardware.name),
    };
    let trainable = match job.mode.lora() {
        Some(lora) => format!("; {} trainable parameters", crate::group_digits(trainable_param_count(&job.model, Some(lora)))),
        None => String::new(),
    };
    let optimizer = Levers::of(job).names().header_suffix;
    format!(
        "{} parameters, {} layers, on {device} ({}): {}{optimizer}{trainable}\n\
         micro-batch {} x {} tokens, gradient accumulation {}\nmemory per rank\n",
        crate::group_digits(param_count(&job.model)),
        job.model.num_hidden_layers,
        counted(plan.nodes, "node"),
        job.mode.label(),
        job.micro_batch,
        job.seq_len,
        job.grad_accum,
    )
}

fn overhead_note(job: &Job) -> String {
    match job.hardware.kind {
        Kind::Cpu => format!(
            "process, libraries, MPI: {} + allocator slack: {}{} largest unit-sized buffers (measured)",
            human(CPU_PROCESS_BYTES),
            cpu_slack_units(job),
            match cpu_mpi_buffer_units(job) {
                0.0 => String::new(),
                units => format!(" + MPI's host buffers {units}"),
            }
        ),
        Kind::Gpu => format!(
            "CUDA context {}{} + allocator slack: {GPU_SLACK_UNITS} largest unit-sized buffer (assumed)",
            human(CUDA_CONTEXT_BYTES),
            if job.gpus > 1 { format!(" + NCCL {}", human(NCCL_BYTES)) } else { String::new() }
        ),
    }
}

/// `x` with an SI prefix: 58.8 GFLOP, 312 TFLOP/s.
fn flops(x: f64, unit: &str) -> String {
    let (value, prefix) = [(1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")]
        .into_iter()
        .find(|(scale, _)| x >= *scale)
        .map_or((x, ""), |(scale, p)| (x / scale, p));
    format!("{value:.3} {prefix}{unit}").replacen(".000 ", " ", 1)
}

/// Where to look when a plan does not fit.
const NOT_FIT_HINT: &str = "  -> `shard-train plan ... --fit` finds the fewest GPUs and the largest micro-batch that fit; \
                            `--compare` weighs ZeRO-3 on more GPUs, LoRA and QLoRA\n";

/// The peak the step time is computed from, and the dtype it is for.
fn peak(job: &Job) -> String {
    let peak = flops(job.hardware.peak_flops(job.precision), "FLOP/s");
    match (job.hardware.kind, job.precision, job.hardware.peak_tf32_flops) {
        (Kind::Cpu, ..) => format!("{peak} (f32)"),
        (Kind::Gpu, Dtype::Bf16, _) => format!("{peak} (bf16 tensor cores)"),
        (Kind::Gpu, Dtype::F32, Some(tf32)) => format!("{peak} (f32; TF32 tensor cores would give {})", flops(tf32, "FLOP/s")),
        (Kind::Gpu, Dtype::F32, None) => format!("{peak} (f32)"),
    }
}

/// What the figures assume, one line each; the QLoRA note where a plan uses it.
fn notes(job: &Job, plans: &[Plan]) -> Vec<String> {
    let mut notes = vec![
        format!("{}: {}", "overhead", overhead_note(job)),
        format!(
            "step time at {:.0}% MFU of the peak {}; every sequence {} tokens long",
            job.assumptions.mfu * 100.0,
            peak(job),
            job.seq_len
        ),
        format!(
            "links: {:.0} GB/s inside a node, {:.1} GB/s per rank across nodes (nominal, one direction)",
            job.hardware.intra_node_bandwidth / 1e9,
            job.hardware.inter_node_bandwidth / 1e9
        ),
    ];
    match job.hardware.kind {
        Kind::Cpu => notes.push("CPU: models the engine as it runs (burn-flex, state in host memory, the next unit prefetched)".into()),
        Kind::Gpu => notes.push(format!(
            "GPU: models the engine on burn-cuda (f32 master/Adam/grad shards on the device, gathers in {}, next unit \
             prefetched); not yet measured on a GPU",
            match job.precision {
                Dtype::Bf16 => "bf16",
                Dtype::F32 => "f32",
            }
        )),
    }
    if plans.iter().any(|p| p.host_bytes_per_node.is_some()) {
        notes.push(format!(
            "offload: f32 master, Adam states and grad shards in host memory ({} a node, assumed); per step the grad shard \
             goes down and the updated shard up over PCIe ({:.0} GB/s, assumed), AdamW runs on the host ({:.0} GB/s of \
             memory bandwidth a node, assumed), not overlapped",
            human(HOST_MEMORY_PER_NODE),
            PCIE_BANDWIDTH / 1e9,
            HOST_MEMORY_BANDWIDTH / 1e9
        ));
    }
    if plans.iter().any(|p| p.strategy.contains("adamw8bit")) {
        notes.push(
            "8bit: bitsandbytes' AdamW8bit, m and v in 8-bit codes with an f32 absmax per 256 elements (2.03 bytes per parameter)".into(),
        );
    }
    if plans.iter().any(|p| p.strategy.ends_with("qlora")) {
        notes.push(
            "QLoRA: the projections in NF4 with double quantization, held and gathered in records of 16,384 weights \
             (8,456 bytes: 4.13 bits per weight); a unit is dequantized to the compute dtype after its gather (the \
             dequantization's time is not counted)"
                .into(),
        );
    }
    notes
}

fn notes_block(job: &Job, plans: &[Plan]) -> String {
    let mut out = String::from("assumptions\n");
    for note in notes(job, plans) {
        out.push_str(&format!("  - {note}\n"));
    }
    out
}

/// `{"param_count": N, "shapes": {name: shape}}` of `cfg`, every parameter by its HF name.
pub fn architecture_json(cfg: &MistralConfig) -> serde_json::Value {
    let shapes: serde_json::Map<String, serde_json::Value> =
        shard_model::all_params(cfg).into_iter().map(|p| (p.name, p.shape.into())).collect();
    json!({ "param_count": param_count(cfg), "shapes": shapes })
}

/// The architecture of `cfg` and its exact parameter counts, one `key value` line each.
pub fn architecture(cfg: &MistralConfig) -> String {
    let window = cfg.sliding_window.map_or("none (full causal)".to_owned(), |w| w.to_string());
    let block_params = |b: Block| b.params(cfg).iter().map(|p| p.numel() as u64).sum::<u64>();
    let mut out = String::new();
    let mut line = |k: &str, v: String| out.push_str(&format!("{k:<26}{v}\n"));
    line("layers", cfg.num_hidden_layers.to_string());
    line("hidden size", cfg.hidden_size.to_string());
    line("intermediate size", cfg.intermediate_size.to_string());
    line("attention heads", format!("{} ({} KV heads, head_dim {})", cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim));
    line("vocabulary", cfg.vocab_size.to_string());
    line("sliding window", window);
    line("rope theta", cfg.rope_theta.to_string());
    line("rms norm eps", cfg.rms_norm_eps.to_string());
    line("embedding parameters", crate::group_digits(block_params(Block::Embedding)));
    line("parameters per layer", crate::group_digits(block_params(Block::Layer(0))));
    line("norm + lm_head parameters", crate::group_digits(block_params(Block::Head)));
    line("total parameters", crate::group_digits(param_count(cfg)));
    out
}
