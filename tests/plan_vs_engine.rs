//! The planner against the engine's own ledger: for full fine-tuning, LoRA and QLoRA on 1 to 4
//! ranks, `shard-train plan --json` predicts exactly the model-state bytes and the peak of
//! gathered units (with their full-size gradients; QLoRA's NF4 records and their dequantized
//! projections) that `shard-train train` reports in summary.json, and the bytes each step
//! all-gathers; and its model states equal the engine's accounting on layouts
//! (`shard_zero::state_footprint`) for the real Mistral-7B at any world size. With
//! `train.optimizer = "adamw8bit"` the model states are rank 0's exactly. With
//! `runtime.offload = "optimizer"` (alone and with AdamW8bit) the device's model states are the
//! compute-dtype shards, and the plan's host states equal what the engine keeps in host memory.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use shard_model::{LoraConfig, MistralConfig};
use shard_plan::{Assumptions, Dtype, Hardware, Job, Kind, Mode, Optimizer};

/// A run config of two steps on the tiny fixture (without [output]); `lora` adds a [lora] section.
fn tiny_config(lora: Option<&str>) -> String {
    let dir = tiny();
    let (mode, lora) = match lora {
        Some(section) => ("lora", section),
        None => ("full", ""),
    };
    format!(
        "[model]\npath = {dir:?}\n[data]\npath = {:?}\nseq_len = 24\nshuffle = false\n\
         [train]\nmode = \"{mode}\"\nsteps = {STEPS}\nmicro_batch_size = 1\nlr = 1e-3\n{lora}",
        dir.join("data.jsonl")
    )
}

/// The optimizer steps of each run (one metrics line each).
const STEPS: u64 = 2;

/// `plan --config CONFIG --ranks WORLD --json`, its first strategy.
fn plan(config: &Path, world: usize) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_shard-train"))
        .args(["plan", "--config", config.to_str().unwrap(), "--ranks", &world.to_string(), "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "plan failed:\n{}", String::from_utf8_lossy(&out.stderr));
    let value: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    value["strategies"][0].clone()
}

fn summary(run: &Run) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(run.out_dir.join("summary.json")).unwrap()).unwrap()
}

/// Trains `config` on 1..=4 ranks and checks the plan's model states and gathered bytes.
fn assert_plan_equals_ledger(config: &str) {
    for world in 1..=4 {
        let run = train(world, config, "none", &[]);
        run.assert_success();
        let planned = plan(&run.out_dir.parent().unwrap().join("run.toml"), world);
        let bytes = &planned["per_rank_bytes"];
        let states: u64 = ["compute_shards", "master", "optimizer", "grads"].iter().map(|k| bytes[k].as_u64().unwrap()).sum();
        let measured = summary(&run);
        assert_eq!(states, measured["model_state_bytes"].as_u64().unwrap(), "model states, world {world}");
        // Absent from summary.json without offload, as the plan's 0.
        let host_states = measured["host_state_bytes"].as_u64().unwrap_or(0);
        assert_eq!(bytes["host_states"].as_u64().unwrap(), host_states, "host states, world {world}");
        assert_eq!(host_states > 0, config.contains("offload = \"optimizer\""), "world {world}");
        assert_eq!(bytes["gathered"], measured["peak_gathered_bytes"], "gathered, world {world}");
        for step in run.metrics_of_steps(STEPS) {
            assert_eq!(step["model_state_bytes"].as_u64().unwrap(), states, "world {world}");
            assert_eq!(step["peak_gathered_bytes"], bytes["gathered"], "world {world}");
            if world > 1 {
                // The plan counts what a rank receives from the others.
                let collectives = step["bytes_all_gathered"].as_u64().unwrap() + step["bytes_reduce_scattered"].as_u64().unwrap();
                let moved = (collectives as f64 * (world - 1) as f64 / world as f64) as u64;
                assert_eq!(moved, planned["comm_bytes_per_step"].as_u64().unwrap(), "bytes moved, world {world}");
            }
        }
    }
}

#[test]
fn full_fine_tuning_on_1_to_4_ranks() {
    assert_plan_equals_ledger(&tiny_config(None));
}

/// AdamW8bit's states: codes and scales, rank 0's exactly (its shard's blocks, cut ones included).
#[test]
fn adamw8bit_full_fine_tuning_on_1_to_4_ranks() {
    let config = tiny_config(None).replace("[train]\n", "[train]\noptimizer = \"adamw8bit\"\n");
    assert!(config.contains("adamw8bit"));
    assert_plan_equals_ledger(&config);
}

fn with_offload(config: &str) -> String {
    format!("{config}[runtime]\noffload = \"optimizer\"\n")
}

/// The trained shards' f32 master, gradient and Adam m and v in host memory.
#[test]
fn offloaded_full_fine_tuning_on_1_to_4_ranks() {
    assert_plan_equals_ledger(&with_offload(&tiny_config(None)));
}

/// Both levers: the master, the gradient and AdamW8bit's codes and scales in host memory.
#[test]
fn offloaded_adamw8bit_full_fine_tuning_on_1_to_4_ranks() {
    let config = tiny_config(None).replace("[train]\n", "[train]\noptimizer = \"adamw8bit\"\n");
    assert_plan_equals_ledger(&with_offload(&config));
}

#[test]
fn offloaded_lora_on_1_to_4_ranks() {
    assert_plan_equals_ledger(&with_offload(&tiny_config(Some("[lora]\nr = 3\ntargets = [\"q_proj\", \"v_proj\", \"down_proj\"]\n"))));
}

/// The LoRA case's adapters on an NF4 base (quantized at load).
#[test]
fn qlora_on_1_to_4_ranks() {
    let config = tiny_config(Some("[lora]\nr = 3\ntargets = [\"q_proj\", \"v_proj\", \"down_proj\"]\n"))
        .replace("mode = \"lora\"", "mode = \"qlora\"");
    assert!(config.contains("\"qlora\""));
    assert_plan_equals_ledger(&config);
}

#[test]
fn lora_on_1_to_4_ranks() {
    // r = 3 and three targets: adapter parts whose sizes are not multiples of the world size.
    assert_plan_equals_ledger(&tiny_config(Some("[lora]\nr = 3\ntargets = [\"q_proj\", \"v_proj\", \"down_proj\"]\n")));
}

/// Without running anything: Mistral-7B, full fine-tuning, LoRA on some or all projections and
/// QLoRA, 1 to 8 ranks (odd world sizes pad every unit).
#[test]
fn mistral_7b_model_states_equal_the_engines_accounting() {
    let model = MistralConfig::from_file(&fixtures().join("mistral-7b-v0.1/config.json")).unwrap();
    let lora =
        |r: usize, targets: &[&str]| LoraConfig { r, alpha: 16.0, dropout: 0.0, targets: targets.iter().map(|t| t.to_string()).collect() };
    let settings = [
        (None, false),
        (Some(lora(16, &["q_proj", "v_proj"])), false),
        (Some(lora(7, &shard_model::PROJECTIONS)), false),
        (Some(lora(16, &shard_model::PROJECTIONS)), true),
    ];
    for (setting, qlora) in &settings {
        for world in 1..=8 {
            let job = Job {
                model: model.clone(),
                mode: match (setting.clone(), qlora) {
                    (None, _) => Mode::Full,
                    (Some(lora), false) => Mode::Lora(lora),
                    (Some(lora), true) => Mode::Qlora(lora),
                },
                optimizer: Optimizer::AdamW,
                offload: false,
                hardware: Hardware::cpu(),
                precision: Dtype::F32,
                reduce: Dtype::F32,
                gpus: world,
                gpus_per_node: world,
                micro_batch: 1,
                grad_accum: 1,
                seq_len: 1024,
                sequences: None,
                memory_limit: None,
                price_per_gpu_hour: None,
                assumptions: Assumptions::for_kind(Kind::Cpu),
            };
            let planned = shard_plan::plan(&job).unwrap().per_rank_bytes.model_states();
            let engine = shard_zero::state_footprint(&model, setting.as_ref(), *qlora, world, shard_zero::Dtype::F32).model_state_bytes;
            assert_eq!(planned, engine, "world {world}, lora {setting:?}, qlora {qlora}");
            if !qlora {
                let expected = mistral_7b_states_by_hand(setting.as_ref(), world as u64);
                assert_eq!(planned, expected, "world {world}, lora {setting:?}: the planner against the sums by hand");
            }
        }
    }
}

/// Mistral-7B's model states on a rank of `world`, from its config.json's sizes and the rules of
/// ZeRO-3 alone (not from the planner or the engine): each block (the embedding, each decoder
/// layer, the final norm with the head) is flattened and padded to a multiple of the world, a
/// rank holding 1/world of it; a trained element costs 16 bytes (f32 master, Adam m and v, f32
/// gradient), a frozen one its f32 value. LoRA adds, per layer, a trained part of r x (in + out)
/// per targeted projection.
fn mistral_7b_states_by_hand(lora: Option<&LoraConfig>, world: u64) -> u64 {
    let text = std::fs::read_to_string(fixtures().join("mistral-7b-v0.1/config.json")).unwrap();
    let config: serde_json::Value = serde_json::from_str(&text).unwrap();
    let size = |key: &str| config[key].as_u64().unwrap();
    let (hidden, inter, vocab, layers) = (size("hidden_size"), size("intermediate_size"), size("vocab_size"), size("num_hidden_layers"));
    let kv = size("num_key_value_heads") * hidden / size("num_attention_heads");
    // (in, out) of each projection of a layer.
    let projections = [
        ("q_proj", hidden, hidden),
        ("k_proj", hidden, kv),
        ("v_proj", hidden, kv),
        ("o_proj", hidden, hidden),
        ("gate_proj", hidden, inter),
        ("up_proj", hidden, inter),
        ("down_proj", inter, hidden),
    ];
    let layer: u64 = projections.iter().map(|(_, i, o)| i * o).sum::<u64>() + 2 * hidden;
    let shard = |numel: u64| numel.div_ceil(world);
    let base_bytes = if lora.is_some() { 4 } else { 16 };
    let base = (shard(vocab * hidden) + layers * shard(layer) + shard(hidden + vocab * hidden)) * base_bytes;
    let adapters = lora.map_or(0, |lora| {
        let r = lora.r as u64;
        let per_layer: u64 =
            projections.iter().filter(|(name, ..)| lora.targets.iter().any(|t| t == name)).map(|(_, i, o)| r * (i + o)).sum();
        layers * shard(per_layer) * 16
    });
    base + adapters
}
