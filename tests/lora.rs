//! LoRA on the sharded engine against peft: adapters after training, losses, the merged export,
//! what the engine holds and moves, and bad adapter inputs.

mod common;

use common::*;
use shard_checkpoint::{HfCheckpoint, PEFT_PREFIX};
use shard_model::{Block, MistralConfig, lora_params};

fn lora_fixture() -> std::path::PathBuf {
    tiny().join("lora")
}

fn train_lora(world: usize, micro_batch: usize, export: &str) -> Run {
    train(world, &fixture_config(&tiny(), Mode::Lora, world, micro_batch, 1), export, &[])
}

/// Adapters after three steps and losses equal peft's, on 1, 2 and 4 ranks; the adapter config
/// says what was trained.
#[test]
fn adapters_equal_peft_on_1_2_and_4_ranks() {
    for (world, micro_batch) in [(1, 4), (2, 2), (4, 1)] {
        let run = train_lora(world, micro_batch, "peft");
        assert_lora_matches_peft(&run, &format!("world {world}"));

        let config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(run.out_dir.join("final/adapter_config.json")).unwrap()).unwrap();
        let reference = reference_json(&tiny());
        assert_eq!(config["r"], reference["lora"]["r"]);
        assert_eq!(config["lora_alpha"], reference["lora"]["alpha"]);
        assert_eq!(config["lora_dropout"].as_f64(), reference["lora"]["dropout"].as_f64());
        assert_eq!(config["target_modules"], reference["lora"]["targets"]);
        assert_eq!(config["peft_type"], "LORA");
    }
}

/// The start-up line counts the trainable parameters as peft does: the elements of peft's adapters.
#[test]
fn the_run_counts_its_trainable_parameters() {
    let peft = HfCheckpoint::open_file(&lora_fixture().join("adapter_model.safetensors")).unwrap();
    let adapter_elements: usize = peft.names().map(|name| peft.shape(name).unwrap().iter().product::<usize>()).sum();
    let run = train_lora(1, 4, "peft");
    let stdout = String::from_utf8_lossy(&run.output.stdout);
    let expected = " trainable (the LoRA adapters)";
    let line = stdout.lines().find(|l| l.contains(expected)).unwrap_or_else(|| panic!("no trainable count:\n{stdout}"));
    let count: usize = line.split(", ").nth(1).unwrap().split(' ').next().unwrap().replace(',', "").parse().unwrap();
    assert_eq!(count, adapter_elements, "{line}");
}

/// The merged export is the base plus (alpha / r) B A, checked with peft's reference adapters;
/// what LoRA does not touch is the base, bit for bit.
#[test]
fn merged_export_is_base_plus_scaled_adapter_product() {
    let run = train_lora(2, 2, "hf");
    run.assert_success();
    let merged = run.export();
    let base = HfCheckpoint::open(&tiny()).unwrap();
    let adapters = HfCheckpoint::open_file(&lora_fixture().join("adapter_model.safetensors")).unwrap();
    let cfg = MistralConfig::from_file(&tiny().join("config.json")).unwrap();
    let reference = reference_json(&tiny());
    let scale = reference["lora"]["alpha"].as_f64().unwrap() / reference["lora"]["r"].as_f64().unwrap();
    for spec in shard_model::all_params(&cfg) {
        let ours = merged.read_f32(&spec.name).unwrap();
        let mut expected = base.read_f32(&spec.name).unwrap();
        let stem = spec.name.trim_end_matches(".weight");
        let a_name = format!("{PEFT_PREFIX}{stem}.lora_A.weight");
        match (adapters.shape(&a_name), adapters.shape(&format!("{PEFT_PREFIX}{stem}.lora_B.weight"))) {
            (Some(a_shape), Some(_)) => {
                let a = adapters.read_f32(&a_name).unwrap();
                let b = adapters.read_f32(&format!("{PEFT_PREFIX}{stem}.lora_B.weight")).unwrap();
                let (r, inputs) = (a_shape[0], a_shape[1]);
                for (row, chunk) in expected.chunks_mut(inputs).enumerate() {
                    for (col, w) in chunk.iter_mut().enumerate() {
                        let delta: f64 = (0..r).map(|k| b[row * r + k] as f64 * a[k * inputs + col] as f64).sum();
                        *w += (scale * delta) as f32;
                    }
                }
                assert_close_params(&spec.name, &ours, &expected, ParamTolerance::f32_training(&tiny(), Mode::Lora));
            }
            _ => assert_eq!(ours, expected, "{} is not adapted and must stay the base", spec.name),
        }
    }
}

/// Optimizer and gradient state only for the adapters; reduce-scatters move only the padded
/// adapters; all-gathers move every unit in forward and the layers again in backward.
#[test]
fn engine_holds_and_moves_adapter_state_only() {
    let cfg = MistralConfig::from_file(&tiny().join("config.json")).unwrap();
    let reference = reference_json(&tiny());
    let r = reference["lora"]["r"].as_u64().unwrap() as usize;
    let padded = |numel: usize, world: usize| (numel.div_ceil(world) * world) as u64;
    for (world, micro_batch) in [(1, 4), (2, 2), (4, 1)] {
        let run = train_lora(world, micro_batch, "none");
        run.assert_success();
        let (mut states, mut adapters, mut gathered_forward, mut gathered_backward) = (0, 0, 0, 0);
        for block in Block::all(&cfg) {
            let base = padded(block.params(&cfg).iter().map(|p| p.numel()).sum(), world);
            states += base / world as u64 * 4;
            gathered_forward += base;
            if let Block::Layer(i) = block {
                let adapter = padded(lora_params(&cfg, i, r, shard_model::PROJECTIONS.into_iter()).iter().map(|p| p.numel()).sum(), world);
                states += adapter / world as u64 * 16;
                adapters += adapter;
                gathered_forward += adapter;
                gathered_backward += base + adapter;
            }
        }
        let lora = shard_model::LoraConfig { r, alpha: 8.0, dropout: 0.0, targets: shard_model::PROJECTIONS.map(String::from).to_vec() };
        assert_eq!(
            shard_zero::state_footprint(&cfg, Some(&lora), false, world, shard_zero::Dtype::F32).model_state_bytes,
            states,
            "the no-allocation accounting"
        );
        for m in run.tiny_metrics() {
            assert_eq!(m["model_state_bytes"].as_u64().unwrap(), states, "world {world}");
            assert_eq!(m["bytes_reduce_scattered"].as_u64().unwrap(), adapters * 4, "world {world}");
            assert_eq!(m["bytes_all_gathered"].as_u64().unwrap(), (gathered_forward + gathered_backward) * 4, "world {world}");
        }
    }
}

/// Runs a LoRA config with `lora_section` in place of the fixture's [lora] and expects a clear
/// error naming `expected` before any step.
fn assert_rejected(lora_section: &str, expected: &[&str]) {
    let config = fixture_config(&tiny(), Mode::Lora, 1, 4, 1);
    let config = format!("{}{lora_section}", &config[..config.find("[lora]").unwrap()]);
    let run = train(1, &config, "peft", &[]);
    assert!(!run.output.status.success(), "should fail");
    for piece in expected {
        assert!(run.stderr().contains(piece), "stderr lacks {piece:?}:\n{}", run.stderr());
    }
    assert!(!run.stderr().contains("panicked"));
    assert!(!run.out_dir.join("metrics.jsonl").exists() || run.metrics().is_empty(), "no step may run");
}

#[test]
fn bad_adapter_inputs_fail_before_training() {
    let init = lora_fixture().join("adapter_init.safetensors");
    assert_rejected("[lora]\nr = 4\ntargets = [\"q_proj\", \"qkv_proj\"]\n", &["`lora.targets`", "\"qkv_proj\""]);
    assert_rejected("[lora]\nr = 0\n", &["`lora.r`", "at least 1"]);
    // An init file made for r = 4 on seven projections, read as r = 2 on two.
    assert_rejected(
        &format!("[lora]\nr = 2\ntargets = [\"q_proj\", \"v_proj\"]\ninit = {init:?}\n"),
        &["adapter_init.safetensors", "unexpected (20)", "wrong shape (8)", "q_proj.lora_A.weight: expected [2, 64], found [4, 64]"],
    );
}
