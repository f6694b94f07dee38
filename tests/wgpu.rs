//! The engine on burn-wgpu (`runtime.device = "wgpu"`, cubecl's generic path, the same code as
//! burn-cuda's but for the kernels' compiler and NCCL) against the references the CPU engine
//! meets, at the same f32 bounds: full fine-tuning, LoRA and QLoRA at world 1 and 2, collectives
//! over MPI through host buffers, eval, a stop and resume, exports, and cubecl's pool in
//! summary.json, which an offloaded optimizer lowers.
//!
//! Built only with `--features wgpu` (required-features). On a machine without a Vulkan device
//! the tests are skipped, except under `CI=true`, where they fail: CI installs Mesa's lavapipe
//! (Debian `mesa-vulkan-drivers libvulkan1`), which runs the Vulkan kernels on the CPU.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;

const ON_WGPU: &str = "[runtime]\ndevice = \"wgpu\"\n";

/// Whether this machine has a Vulkan loader and a driver for it (an ICD file); without them, a
/// skip, or under CI=true a failure naming what to install.
fn vulkan_present() -> bool {
    let icd_dirs = ["/usr/share/vulkan/icd.d", "/etc/vulkan/icd.d"];
    let has_icd = icd_dirs.iter().any(|d| std::fs::read_dir(d).is_ok_and(|mut entries| entries.next().is_some()));
    if has_icd && shard_train_core::system::cuda_check::library_loads("libvulkan.so.1") {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "CI=true but this machine has no Vulkan device (libvulkan.so.1 and an ICD in {icd_dirs:?}): install mesa-vulkan-drivers libvulkan1"
    );
    eprintln!("skipped: no Vulkan device on this machine (install mesa-vulkan-drivers libvulkan1 for lavapipe)");
    false
}

fn on_wgpu(config: &str) -> String {
    format!("{config}{ON_WGPU}")
}

#[test]
fn full_fine_tuning_at_world_1_and_2_meets_the_reference_with_mpi_collectives() {
    if !vulkan_present() {
        return;
    }
    let world_1 = train(1, &on_wgpu(&fixture_config(&tiny(), Mode::Full, 1, 4, 1)), "hf", &[]);
    let stdout = String::from_utf8_lossy(&world_1.output.stdout);
    assert!(stdout.contains("device: wgpu on"), "{stdout}");
    // runtime.tf32 off (the default): the f32 matmuls take the IEEE launch, and the run says so.
    assert!(stdout.lines().any(|l| l == "f32 matmul: IEEE"), "{stdout}");
    let summary: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(world_1.out_dir.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["f32_matmul"], "IEEE", "{summary}");
    assert_full_ft_matches_reference(&tiny(), &world_1);
    // At world 2 with the collectives named: MPI through host buffers is wgpu's only choice.
    let config = format!("{}collectives = \"mpi\"\n", on_wgpu(&fixture_config(&tiny(), Mode::Full, 2, 2, 1)));
    let world_2 = train(2, &config, "hf", &[]);
    assert_full_ft_matches_reference(&tiny(), &world_2);
    assert_pool_reported(&world_2.out_dir, 2);
}

/// cubecl's pool, per rank, in summary.json.
fn assert_pool_reported(out_dir: &Path, world: usize) {
    let summary: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out_dir.join("summary.json")).unwrap()).unwrap();
    let ranks = summary["device_memory"].as_array().unwrap_or_else(|| panic!("no device_memory in summary.json: {summary}"));
    assert_eq!(ranks.len(), world, "{summary}");
    for rank in ranks {
        let (reserved, in_use) = (rank["pool_reserved_bytes"].as_u64().unwrap(), rank["pool_in_use_bytes"].as_u64().unwrap());
        // The tiny model's parameters alone are ~1 MiB per rank in f32.
        assert!(reserved >= in_use && in_use > 100_000, "{rank}");
    }
}

/// With `runtime.offload = "optimizer"` the device keeps the trained shards in the compute dtype
/// only. Full fine-tuning at world 2 in f32, with and without offload: on each rank, cubecl's pool
/// in use after a step (the most over the run, summary.json's device_memory) drops by at least
/// the offloaded states' bytes (f32 master, gradient shard, Adam m and v: summary.json's
/// host_state_bytes) less the f32 copy of the shard the device keeps (a quarter of them).
#[test]
fn offload_lowers_the_device_pool_by_the_offloaded_states() {
    if !vulkan_present() {
        return;
    }
    let config = on_wgpu(&fixture_config(&tiny(), Mode::Full, 2, 2, 1));
    let offloaded = config.replace(ON_WGPU, &format!("{ON_WGPU}offload = \"optimizer\"\n"));
    assert!(offloaded.contains("offload"));
    let [without, with] = [&config, &offloaded].map(|config| {
        let run = train(2, config, "none", &[]);
        run.assert_success();
        serde_json::from_str::<serde_json::Value>(&std::fs::read_to_string(run.out_dir.join("summary.json")).unwrap()).unwrap()
    });
    let host_states = with["host_state_bytes"].as_u64().unwrap();
    let expected_drop = host_states - host_states / 4;
    let in_use = |summary: &serde_json::Value, rank: usize| summary["device_memory"][rank]["pool_in_use_bytes"].as_u64().unwrap();
    for rank in 0..2 {
        let (before, after) = (in_use(&without, rank), in_use(&with, rank));
        eprintln!("rank {rank}: pool in use {before} B without offload, {after} B with; offloaded {host_states} B");
        assert!(
            before.saturating_sub(after) >= expected_drop,
            "rank {rank}: the pool in use went from {before} to {after} bytes, not down by {expected_drop} (offloaded {host_states})"
        );
    }
}

#[test]
fn lora_at_world_1_and_2_meets_peft() {
    if !vulkan_present() {
        return;
    }
    for (world, micro_batch) in [(1, 4), (2, 2)] {
        let run = train(world, &on_wgpu(&fixture_config(&tiny(), Mode::Lora, world, micro_batch, 1)), "peft", &[]);
        assert_lora_matches_peft(&run, &format!("wgpu, world {world}"));
    }
}

#[test]
fn qlora_at_world_1_and_2_meets_bitsandbytes_and_peft() {
    if !vulkan_present() {
        return;
    }
    for (world, micro_batch) in [(1, 4), (2, 2)] {
        let run = train(world, &on_wgpu(&qlora_config(world, micro_batch, 1, &tiny())), "peft", &[]);
        assert_qlora_matches_reference(&run, &format!("wgpu, world {world}"));
    }
}

/// Stopped after step 2 (a save), resumed from it: the reference's three steps all the same, and
/// the eval loss at the end equals the CPU engine's.
#[test]
fn a_stopped_run_resumes_to_the_reference_and_evaluates_as_the_cpu_engine() {
    if !vulkan_present() {
        return;
    }
    let eval = format!("[eval]\npath = {:?}\n", tiny().join("data.jsonl"));
    let config = format!("{}{eval}", fixture_config(&tiny(), Mode::Full, 2, 2, 1));
    let stopped = train(2, &on_wgpu(&config), "hf", &[("SHARD_TRAIN_TEST_INTERRUPT_AFTER", "2")]);
    stopped.assert_success();
    assert_eq!(stopped.metrics().len(), 2, "stopped after step 2");

    let resume_config = format!("{}[output]\ndir = {:?}\nexport = \"hf\"\n", on_wgpu(&config), stopped.out_dir);
    let path = stopped.out_dir.parent().unwrap().join("resume.toml");
    std::fs::write(&path, resume_config).unwrap();
    let mut cmd = mpirun(2);
    cmd.args(["train", "--config", path.to_str().unwrap(), "--resume", "latest"]);
    let resumed = run_with_timeout(&mut cmd, Duration::from_secs(120));
    assert!(resumed.status.success(), "{}", String::from_utf8_lossy(&resumed.stderr));
    assert_full_ft_matches_reference(&tiny(), &stopped);

    let on_cpu = train(2, &config, "none", &[]);
    on_cpu.assert_success();
    let eval_loss = |run: &Run| run.metrics().last().unwrap()["eval_loss"].as_f64().unwrap();
    let (wgpu, cpu) = (eval_loss(&stopped), eval_loss(&on_cpu));
    assert!((wgpu - cpu).abs() < 1e-5, "eval loss {wgpu} on wgpu, {cpu} on the CPU");
}
