//! `runtime.offload = "optimizer"`: each rank keeps its trained parts' f32 masters, gradient
//! shards and Adam states in host memory and runs AdamW there; the device keeps the compute-dtype
//! copy. On the CPU the device is the host, so these tests show that the path changes no bit:
//! full fine-tuning and LoRA at world 2, in f32 and bf16, AdamW8bit and hybrid sharding give the
//! parameters of the same run without offload; a save made with offload resumes to the uninterrupted run at
//! another world size, with or without offload, and the other way round. That the device's
//! memory drops by the offloaded states is tests/wgpu.rs's
//! `offload_lowers_the_device_pool_by_the_offloaded_states`.

mod common;

use common::*;

/// `config` with `runtime.offload = "optimizer"` (in its [runtime] section, when it has one).
fn with_offload(config: &str) -> String {
    if config.contains("[runtime]\n") {
        config.replacen("[runtime]\n", "[runtime]\noffload = \"optimizer\"\n", 1)
    } else {
        format!("{config}\n[runtime]\noffload = \"optimizer\"\n")
    }
}

/// `config` computing in bf16 (the [model] section's dtype).
fn in_bf16(config: &str) -> String {
    assert!(config.contains("[data]"), "{config}");
    config.replacen("[data]", "dtype = \"bf16\"\n[data]", 1)
}

/// Trains `config` with and without offload at world 2 and compares the exports byte for byte,
/// and each step's loss and gradient norm.
fn assert_offload_changes_nothing(config: &str, export: &str, what: &str) {
    let without = train(2, config, export, &[]);
    without.assert_success();
    let with = train(2, &with_offload(config), export, &[]);
    with.assert_success();
    assert!(with.exported_bytes() == without.exported_bytes(), "{what}: the parameters differ with offload");
    let figures = |run: &Run| run.metrics().iter().map(|m| (m["loss"].clone(), m["grad_norm"].clone())).collect::<Vec<_>>();
    assert_eq!(figures(&with), figures(&without), "{what}: losses and gradient norms");
    let host_bytes = |run: &Run| run.metrics()[0]["host_state_bytes"].as_u64();
    assert!(host_bytes(&with).is_some_and(|b| b > 0) && host_bytes(&without).is_none(), "{what}: host_state_bytes in metrics.jsonl");
}

#[test]
fn full_fine_tuning_at_world_2_equals_the_run_without_offload_in_f32_and_bf16() {
    let config = fixture_config(&tiny(), Mode::Full, 2, 2, 1);
    assert_offload_changes_nothing(&config, "hf", "full, f32");
    assert_offload_changes_nothing(&in_bf16(&config), "hf", "full, bf16");
}

#[test]
fn lora_at_world_2_equals_the_run_without_offload_in_f32_and_bf16() {
    let config = fixture_config(&tiny(), Mode::Lora, 2, 2, 1);
    assert_offload_changes_nothing(&config, "peft", "lora, f32");
    assert_offload_changes_nothing(&in_bf16(&config), "peft", "lora, bf16");
}

/// Both levers: AdamW8bit's states, on the host already, with the master and gradient there too.
#[test]
fn adamw8bit_with_offload_equals_adamw8bit() {
    let config = fixture_config(&tiny(), Mode::Full, 2, 2, 1).replace("[train]\n", "[train]\noptimizer = \"adamw8bit\"\n");
    assert!(config.contains("adamw8bit"));
    assert_offload_changes_nothing(&config, "hf", "adamw8bit");
}

/// Hybrid sharding (two shard groups of one rank): the offloaded gradient shard's all-reduce
/// across the groups makes a round trip through the device's collective.
#[test]
fn hybrid_sharding_equals_the_run_without_offload() {
    let config = format!("{}\n[runtime]\nshard_size = 1\n", fixture_config(&tiny(), Mode::Full, 2, 2, 1));
    assert_offload_changes_nothing(&config, "hf", "shard_size = 1");
}

/// A save holds the same files with and without offload: stopped after 2 of 4 steps on 2 ranks,
/// resumed on 3, it ends where an uninterrupted run on 3 ranks does, whichever run offloads (data
/// whose result does not depend on the world size: `world_invariant_config`).
#[test]
fn a_save_resumes_at_another_world_size_with_or_without_offload() {
    let tmp = tempfile::tempdir().unwrap();
    let data = one_live_row_per_step(tmp.path());
    let config = |world: usize, offload: bool| {
        let config = world_invariant_config(&data, world);
        if offload { with_offload(&config) } else { config }
    };
    let whole = train(3, &config(3, false), "hf", &[]);
    whole.assert_success();
    for (saved_with, resumed_with) in [(true, true), (true, false), (false, true)] {
        let first = train(2, &config(2, saved_with), "hf", &[("SHARD_TRAIN_TEST_INTERRUPT_AFTER", "2")]);
        first.assert_success();
        assert_eq!(first.metrics().len(), 2, "stopped after step 2");
        let resumed = first.resume(3, &config(3, resumed_with), "hf");
        assert!(resumed.status.success(), "{}", String::from_utf8_lossy(&resumed.stderr));
        assert!(
            first.exported_bytes() == whole.exported_bytes(),
            "saved with offload {saved_with}, resumed with offload {resumed_with}: differs from the uninterrupted run"
        );
    }
}
