//! `train.optimizer = "adamw8bit"`: bitsandbytes' AdamW8bit (tests/fixtures/tiny-mistral/adamw8bit,
//! made by tools/make_adam8bit_reference.py), whose result does not depend on the sharding: the
//! same bits at 1, 2 and 3 ranks and after a resume from 2 ranks on 3, blocks cut by shard
//! boundaries included; LoRA and QLoRA train with it; a resume with the other optimizer is refused.

mod common;

use std::path::Path;

use common::*;
use shard_checkpoint::HfCheckpoint;
use shard_model::{MistralConfig, all_params};

fn with_adamw8bit(config: &str) -> String {
    assert!(config.contains("[train]\n"), "{config}");
    config.replace("[train]\n", "[train]\noptimizer = \"adamw8bit\"\n")
}

fn reference() -> (HfCheckpoint, serde_json::Value) {
    let dir = tiny().join("adamw8bit");
    let json = serde_json::from_str(&std::fs::read_to_string(dir.join("adam8bit.json")).unwrap()).unwrap();
    (HfCheckpoint::open_file(&dir.join("adam8bit.safetensors")).unwrap(), json)
}

fn norm(v: &[f32]) -> f64 {
    v.iter().map(|x| f64::from(*x) * f64::from(*x)).sum::<f64>().sqrt()
}

fn minus(a: &[f32], b: &[f32]) -> Vec<f32> {
    a.iter().zip(b).map(|(x, y)| x - y).collect()
}

#[test]
fn our_dynamic_maps_are_bitsandbytes() {
    let (reference, _) = reference();
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&shard_nf4::dynamic_map()), bits(&reference.read_f32("qmap.signed").unwrap()));
    assert_eq!(bits(&shard_nf4::dynamic_map_unsigned()), bits(&reference.read_f32("qmap.unsigned").unwrap()));
}

/// Per tensor, our parameters after the fixture's 3 steps lie near bitsandbytes' (see
/// [`assert_near_bitsandbytes`]).
#[test]
fn full_fine_tuning_matches_bitsandbytes_adamw8bit() {
    let (reference, json) = reference();
    let run = train(2, &with_adamw8bit(&fixture_config(&tiny(), Mode::Full, 2, 2, 1)), "hf", &[]);
    run.assert_success();
    for (m, expected) in run.tiny_metrics().iter().zip(json["losses_bnb8"].as_array().unwrap()) {
        assert!((m["loss"].as_f64().unwrap() - expected.as_f64().unwrap()).abs() < 1e-4, "loss {m} vs bitsandbytes' {expected}");
    }
    let (exported, init) = (run.export(), HfCheckpoint::open(&tiny()).unwrap());
    let cfg = MistralConfig::from_file(&tiny().join("config.json")).unwrap();
    for spec in all_params(&cfg) {
        assert_near_bitsandbytes(&spec.name, &exported.read_f32(&spec.name).unwrap(), &reference, &init.read_f32(&spec.name).unwrap());
    }
}

/// `ours` (the tensor `name` after the steps, from `init`) lies within a tenth of the distance
/// between bitsandbytes' AdamW8bit and torch's 32-bit AdamW (`reference`'s bnb8.* and torch32.*)
/// from bitsandbytes', relative to bitsandbytes' update; at least 1e-5 of it, for the tensors
/// whose states stay 32-bit.
fn assert_near_bitsandbytes(name: &str, ours: &[f32], reference: &HfCheckpoint, init: &[f32]) {
    let bnb = reference.read_f32(&format!("bnb8.{name}")).unwrap();
    let torch32 = reference.read_f32(&format!("torch32.{name}")).unwrap();
    let update = norm(&minus(&bnb, init));
    let gap = norm(&minus(&bnb, &torch32)) / update;
    let ours_off = norm(&minus(ours, &bnb)) / update;
    assert!(
        ours_off <= (0.1 * gap).max(1e-5),
        "{name}: {ours_off:e} of the update from bitsandbytes, whose 8-bit vs 32-bit gap is {gap:e}"
    );
}

/// [`world_invariant_config`] with AdamW8bit.
fn sharding_config(data: &Path, world: usize) -> String {
    with_adamw8bit(&world_invariant_config(data, world))
}

#[test]
fn one_two_and_three_ranks_give_the_same_bits() {
    let tmp = tempfile::tempdir().unwrap();
    let data = one_live_row_per_step(tmp.path());
    let runs: Vec<Run> = [1, 2, 3].into_iter().map(|world| train(world, &sharding_config(&data, world), "hf", &[])).collect();
    for run in &runs {
        run.assert_success();
        assert_eq!(run.metrics().len(), 4);
    }
    let one = runs[0].exported_bytes();
    for (run, world) in runs.iter().zip([1, 2, 3]).skip(1) {
        assert!(run.exported_bytes() == one, "{world} ranks differ from 1 rank");
    }
}

#[test]
fn a_resume_from_two_ranks_on_three_is_the_uninterrupted_run() {
    let tmp = tempfile::tempdir().unwrap();
    let data = one_live_row_per_step(tmp.path());
    let whole = train(3, &sharding_config(&data, 3), "hf", &[]);
    whole.assert_success();
    let first = train(2, &sharding_config(&data, 2), "hf", &[("SHARD_TRAIN_TEST_INTERRUPT_AFTER", "2")]);
    first.assert_success();
    assert_eq!(first.metrics().len(), 2, "stopped after step 2");
    let resumed = first.resume(3, &sharding_config(&data, 3), "hf");
    assert!(resumed.status.success(), "{}", String::from_utf8_lossy(&resumed.stderr));
    assert!(first.exported_bytes() == whole.exported_bytes(), "the resumed run differs from the uninterrupted one");
}

#[test]
fn a_resume_with_the_other_optimizer_is_refused() {
    let adamw = config(&tiny(), Mode::Full, 2, 2, 4);
    for (saved_with, resumed_with, saved, now) in
        [(adamw.clone(), with_adamw8bit(&adamw), "adamw", "adamw8bit"), (with_adamw8bit(&adamw), adamw.clone(), "adamw8bit", "adamw")]
    {
        let first = train(2, &saved_with, "hf", &[("SHARD_TRAIN_TEST_INTERRUPT_AFTER", "2")]);
        first.assert_success();
        let resumed = first.resume(2, &resumed_with, "hf");
        let stderr = String::from_utf8_lossy(&resumed.stderr);
        assert!(!resumed.status.success(), "the resume should be refused");
        let expected = format!("train.optimizer = \"{saved}\", this run has \"{now}\"");
        assert!(stderr.contains(&expected), "{stderr:?} should contain {expected:?}");
    }
}

/// The fixture's adapters are all under 4,096 elements: their states stay 32-bit, with
/// bitsandbytes' 32-bit formula, within the project's f32 tolerance of torch's AdamW.
#[test]
fn lora_and_qlora_train_with_adamw8bit() {
    let lora = fixture_config(&tiny(), Mode::Lora, 2, 2, 1);
    let qlora = lora.replace("mode = \"lora\"", "mode = \"qlora\"");
    for (config, expected) in
        [(lora, tiny().join("lora/adapter_model.safetensors")), (qlora, tiny().join("qlora/adapter_model.safetensors"))]
    {
        let run = train(2, &with_adamw8bit(&config), "peft", &[]);
        run.assert_success();
        let (ours, theirs) = (run.export(), HfCheckpoint::open_file(&expected).unwrap());
        for name in theirs.names() {
            assert_close_params(
                name,
                &ours.read_f32(name).unwrap(),
                &theirs.read_f32(name).unwrap(),
                ParamTolerance::f32_training(&tiny(), Mode::Lora),
            );
        }
    }
}

/// LoRA with adapters large enough for 8-bit states (r = 64: 24 of the 28 adapter tensors reach
/// bitsandbytes' 4,096 elements; lora_r64.*, made by tools/make_adam8bit_reference.py from a
/// random init of A and B) against bitsandbytes' AdamW8bit on peft, per adapter tensor as full
/// fine-tuning is held.
#[test]
fn large_lora_adapters_match_bitsandbytes_adamw8bit() {
    let dir = tiny().join("adamw8bit");
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("lora_r64.json")).unwrap()).unwrap();
    let eight_bit = json["per_tensor"].as_object().unwrap().values().filter(|t| t["states"]["state1"][1] == "torch.uint8").count();
    assert_eq!(eight_bit, 24, "{json}");
    let init_path = dir.join("lora_r64_init.safetensors");
    let lora = format!("[lora]\nr = {}\nalpha = {}\ntargets = {}\ninit = {init_path:?}\n", json["r"], json["alpha"], json["targets"]);
    let config = fixture_config(&tiny(), Mode::Lora, 2, 2, 1);
    let config = format!("{}{lora}", &config[..config.find("[lora]").unwrap()]);
    let run = train(2, &with_adamw8bit(&config), "peft", &[]);
    run.assert_success();
    let losses = run.tiny_metrics().iter().map(|m| m["loss"].as_f64().unwrap()).collect::<Vec<_>>();
    assert_eq!(losses.len(), json["losses_bnb8"].as_array().unwrap().len());
    for (loss, expected) in losses.iter().zip(json["losses_bnb8"].as_array().unwrap()) {
        assert!((loss - expected.as_f64().unwrap()).abs() < 1e-4, "loss {loss} vs bitsandbytes' {expected}");
    }
    let (reference, init, ours) =
        (HfCheckpoint::open_file(&dir.join("lora_r64.safetensors")).unwrap(), HfCheckpoint::open_file(&init_path).unwrap(), run.export());
    let names: Vec<&str> = init.names().collect();
    assert_eq!(ours.names().collect::<Vec<_>>(), names);
    for name in names {
        assert_near_bitsandbytes(name, &ours.read_f32(name).unwrap(), &reference, &init.read_f32(name).unwrap());
    }
}
