//! The planner's arithmetic on the real Mistral-7B config: model states as the engine and
//! DeepSpeed count them, the per-GPU totals of the README's example, FLOPs, and --fit.

use std::path::PathBuf;

use shard_model::{LoraConfig, MistralConfig, param_count};
use shard_plan::{Assumptions, Dtype, Hardware, Job, Kind, Mode, compare, deepspeed, fit, plan};

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

#[test]
fn fit_finds_fewest_gpus_then_largest_micro_batch() {
    let found = fit(&job(Mode::Full, 1)).unwrap();
    assert_eq!((found.gpus, found.fits), (2, Some(true)));
    let bigger = plan(&Job { micro_batch: found.micro_batch + 1, ..job(Mode::Full, 2) }).unwrap();
    assert_eq!(bigger.fits, Some(false), "micro-batch {} + 1 should not fit", found.micro_batch);
    let mut tiny_gpu = job(Mode::Full, 1);
    tiny_gpu.memory_limit = Some(1 << 30);
    let err = fit(&tiny_gpu).unwrap_err().to_string();
    assert!(err.contains("does not fit") && err.contains("--micro-batch"), "{err}");
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
