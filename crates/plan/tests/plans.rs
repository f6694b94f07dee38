//! The planner's arithmetic on the real Mistral-7B config: model states as the engine and
//! DeepSpeed count them, the per-GPU totals of the README's example, FLOPs, and --fit.

use std::path::PathBuf;

use shard_model::{LoraConfig, MistralConfig, param_count, trainable_param_count};
use shard_plan::{Assumptions, Dtype, Hardware, Job, Kind, Mode, Optimizer, compare, deepspeed, fit, plan};

fn mistral_7b() -> MistralConfig {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/mistral-7b-v0.1/config.json");
    MistralConfig::from_file(&path).unwrap()
}

fn lora() -> LoraConfig {
    LoraConfig { r: 16, alpha: 32.0, dropout: 0.0, targets: ["q_proj", "k_proj", "v_proj", "o_proj"].map(String::from).to_vec() }
}

/// The README's example: 1,024-token sequences, micro-batch 1, on A100 80GB in bf16.
fn job(mode: Mode, gpus: usize) -> Job {
    let hardware = Hardware::preset("a100-80gb").unwrap();
    Job {
        model: mistral_7b(),
        mode,
        optimizer: Optimizer::AdamW,
        offload: false,
        memory_limit: hardware.memory,
        assumptions: Assumptions::for_kind(Kind::Gpu),
        hardware,
        precision: Dtype::Bf16,
        reduce: Dtype::F32,
        gpus,
        gpus_per_node: 8,
        micro_batch: 1,
        grad_accum: 1,
        seq_len: 1024,
        sequences: Some(10_000.0),
        price_per_gpu_hour: Some(2.0),
    }
}

/// Units (embedding, 32 layers, head) padded to the world size: at most N - 1 elements each.
fn padding_bound(gpus: u64) -> u64 {
    34 * (gpus - 1)
}

/// Full fine-tuning holds the f32 master shard, Adam m, v and the f32 grad shard: 16 bytes per
/// element of its slice, in f32 and in bf16 alike (FSDP2's mixed precision keeps no persistent
/// bf16 copy; tests/zero_engine.rs and tests/mixed_precision.rs check the engine against the same
/// count).
#[test]
fn full_fine_tuning_holds_16_bytes_per_shard_element() {
    for (hardware, precision) in
        [(Hardware::cpu(), Dtype::F32), (Hardware::cpu(), Dtype::Bf16), (Hardware::preset("a100-80gb").unwrap(), Dtype::Bf16)]
    {
        for gpus in [1, 3, 4] {
            let mut j = job(Mode::Full, gpus);
            j.assumptions = Assumptions::for_kind(hardware.kind);
            (j.hardware, j.precision) = (hardware.clone(), precision);
            let b = plan(&j).unwrap().per_rank_bytes;
            let params = param_count(&j.model);
            let elements = b.master / 4;
            assert!(elements * gpus as u64 >= params && elements * gpus as u64 <= params + padding_bound(gpus as u64));
            assert_eq!((b.compute_shards, b.optimizer, b.grads), (0, 8 * elements, 4 * elements));
        }
    }
}

/// `estimate_zero3_model_states_mem_needs_all_live` without offload is 18 bytes per parameter
/// over the GPUs, plus 4 bytes per parameter of the largest module: DeepSpeed keeps a bf16 shard
/// beside the f32 master. We keep FSDP2's 16 (f32 master 4, Adam 8, f32 grad shard 4): the model
/// states are 16/18 of DeepSpeed's to the padding of each unit. The gathered units differ by
/// design (docs/planner.md, "DeepSpeed's estimate").
#[test]
fn zero3_model_states_agree_with_deepspeed() {
    let (params, largest) = deepspeed::model_to_params(&mistral_7b());
    assert_eq!((params, largest), (7_241_732_096, 131_072_000), "embed_tokens and lm_head are the largest modules");
    for gpus in [1u64, 2, 4, 8] {
        let p = plan(&job(Mode::Full, gpus as usize)).unwrap();
        let ours = p.per_rank_bytes.model_states();
        let theirs_states = 18 * params / gpus;
        let fsdp2_states = 16 * params / gpus;
        assert!(
            ours >= fsdp2_states && ours - fsdp2_states <= 16 * padding_bound(gpus),
            "{gpus} GPUs: {ours} vs {fsdp2_states} (DeepSpeed {theirs_states})"
        );
        let theirs = deepspeed::zero3_model_states_gpu_bytes(params, largest, gpus);
        assert_eq!(p.deepspeed_zero3_model_states_bytes, Some(theirs));
        assert_eq!(theirs - theirs_states, 4 * largest);
    }
}

/// The README's question: full fine-tuning does not fit one A100 80GB; ZeRO-3 does on 2, 4 and
/// 8 with falling per-GPU totals; LoRA and QLoRA fit one, QLoRA in less.
#[test]
fn mistral_7b_on_a100_80gb() {
    let plans = compare(&job(Mode::Full, 1), &lora()).unwrap();
    let by = |id: &str, gpus: usize| plans.iter().find(|p| p.strategy == id && p.gpus == gpus).unwrap();
    assert_eq!(by("full", 1).fits, Some(false));
    let totals: Vec<u64> = [2, 4, 8]
        .iter()
        .map(|&g| by("zero3-full", g))
        .inspect(|p| assert_eq!(p.fits, Some(true)))
        .map(|p| p.per_rank_bytes.total)
        .collect();
    assert!(totals.windows(2).all(|w| w[1] < w[0]), "{totals:?}");
    let (l, q) = (by("lora", 1), by("qlora", 1));
    assert_eq!((l.fits, q.fits), (Some(true), Some(true)));
    assert!(q.per_rank_bytes.total < l.per_rank_bytes.total);
    // 16 bytes of AdamW mixed precision per parameter: 115.9 GB, and no persistent bf16 copy.
    let states = by("full", 1).per_rank_bytes.model_states();
    assert!(states > 115_800_000_000 && states < 116_000_000_000, "{states}");
}

/// Full fine-tuning costs 6 FLOPs per parameter per token, plus the recompute (2 more for the
/// layers) and attention; LoRA skips the weight gradients of the base.
/// peft's `print_trainable_parameters` on Mistral-7B-v0.1: r=16 on the attention projections, and
/// r=8 on all seven linears (its figure "trainable params: 20,971,520").
#[test]
fn trainable_parameters_as_peft_counts_them() {
    let cfg = mistral_7b();
    assert_eq!(trainable_param_count(&cfg, Some(&lora())), 13_631_488);
    let all_linears = LoraConfig { r: 8, targets: shard_model::PROJECTIONS.map(String::from).to_vec(), ..lora() };
    assert_eq!(trainable_param_count(&cfg, Some(&all_linears)), 20_971_520);
    assert_eq!(trainable_param_count(&cfg, None), param_count(&cfg));
}

#[test]
fn flops_per_token() {
    let params = param_count(&mistral_7b()) as f64;
    let full = plan(&job(Mode::Full, 1)).unwrap().time.flops_per_token;
    assert!(full > 7.5 * params && full < 8.5 * params, "{}", full / params);
    let lora = plan(&job(Mode::Lora(lora()), 1)).unwrap().time.flops_per_token;
    assert!(lora > 5.5 * params && lora < 6.5 * params, "{}", lora / params);
}

#[test]
fn cost_is_hours_times_gpus_times_price() {
    let p = plan(&job(Mode::Full, 4)).unwrap();
    let hours = 10_000.0 * 1024.0 / p.time.tokens_per_s / 3600.0;
    assert!((p.time.hours.unwrap() - hours).abs() < 1e-9);
    assert!((p.time.cost.unwrap() - hours * 4.0 * 2.0).abs() < 1e-9);
}

/// --fit: full fine-tuning as asked fits no single A100 80GB, so the first lever, AdamW8bit, is
/// tried there and fits; then the largest micro-batch (one more does not fit). A limit that the
/// job fits as asked pulls no lever.
#[test]
fn fit_finds_fewest_gpus_then_largest_micro_batch() {
    let found = fit(&job(Mode::Full, 1)).unwrap();
    assert_eq!((found.gpus, found.fits, found.strategy.as_str()), (1, Some(true), "full-adamw8bit"));
    let bigger = plan(&Job { micro_batch: found.micro_batch + 1, optimizer: Optimizer::AdamW8bit, ..job(Mode::Full, 1) }).unwrap();
    assert_eq!(bigger.fits, Some(false), "micro-batch {} + 1 should not fit", found.micro_batch);
    let roomy = Job { memory_limit: Some(200 << 30), ..job(Mode::Full, 1) };
    assert_eq!(fit(&roomy).unwrap().strategy, "full", "fits as asked: no lever");
    let mut tiny_gpu = job(Mode::Full, 1);
    tiny_gpu.memory_limit = Some(1 << 30);
    let err = fit(&tiny_gpu).unwrap_err().to_string();
    assert!(err.contains("does not fit") && err.contains("--micro-batch"), "{err}");
}

/// AdamW8bit: m and v in 2 bytes per parameter plus an f32 absmax per 256 of each (7.24 B
/// parameters: 14.48 GB + 0.23 GB). Offload: the device keeps the bf16 shard only, the host the
/// f32 master and grads and the states. With both, Mistral-7B full fine-tuning at 1,024 tokens
/// fits one A100 80GB; without either it does not.
#[test]
fn both_levers_fit_mistral_7b_full_fine_tuning_on_one_a100_80gb() {
    let params = param_count(&mistral_7b());
    let eight_bit = plan(&Job { optimizer: Optimizer::AdamW8bit, ..job(Mode::Full, 1) }).unwrap();
    let states = eight_bit.per_rank_bytes.optimizer;
    assert!(states >= 2 * params + params / 256 * 8 && states < 2 * params + params / 256 * 8 + (8 << 20), "{states}");
    let both = plan(&Job { optimizer: Optimizer::AdamW8bit, offload: true, ..job(Mode::Full, 1) }).unwrap();
    let b = &both.per_rank_bytes;
    assert_eq!((b.master, b.optimizer, b.grads, b.compute_shards), (0, 0, 0, 2 * params));
    assert_eq!(b.host_states, 8 * params + states);
    assert_eq!(both.host_bytes_per_node, Some(b.host_states));
    assert_eq!(both.fits, Some(true));
    assert_eq!(plan(&job(Mode::Full, 1)).unwrap().fits, Some(false));
    // Per step over PCIe: 2 x bf16 parameters + f32 gradients, at 25 GB/s.
    let pcie = (params * (2 * 2 + 4)) as f64 / shard_plan::offload::PCIE_BANDWIDTH;
    assert!(both.time.offload_seconds > pcie, "{} vs PCIe alone {pcie}", both.time.offload_seconds);
}

/// The host memory of a node is checked: Mistral-7B with ten times its layers (70 B parameters)
/// on one node of 8 GPUs fits their memory offloaded, but its 1.1 TB of states do not fit the
/// node's 1000 GiB.
#[test]
fn offloaded_states_must_fit_the_nodes_host_memory() {
    let mut model = mistral_7b();
    model.num_hidden_layers *= 10;
    let p = plan(&Job { model, offload: true, ..job(Mode::Full, 8) }).unwrap();
    assert!(p.per_rank_bytes.total < 70 << 30, "the GPUs would hold it: {}", p.per_rank_bytes.total);
    assert!(p.host_bytes_per_node.unwrap() > 1000 << 30);
    assert_eq!(p.fits, Some(false));
}

#[test]
fn what_cannot_be_modelled_says_why() {
    // QLoRA runs on the CPU in f32 too (the engine dequantizes with tensor ops): it is planned.
    let mut cpu = job(Mode::Qlora(lora()), 1);
    cpu.hardware = Hardware::cpu();
    cpu.precision = Dtype::F32;
    assert!(plan(&cpu).is_ok());
    let none = Job { mode: Mode::Lora(LoraConfig { targets: vec![], ..lora() }), ..job(Mode::Full, 1) };
    assert!(plan(&none).unwrap_err().to_string().contains("at least one target projection"));
}
