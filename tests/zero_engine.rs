//! The ZeRO-3 engine under mpirun against transformers' references: any world size and any split
//! into micro-batches trains exactly like one big batch; traffic and memory are what ZeRO-3 implies;
//! a failing rank ends the job.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use shard_model::{Block, MistralConfig};

/// Trains the fixture in `dir` with its reference hyper-parameters (full fine-tuning).
fn train_fixture(dir: &Path, world: usize, micro_batch: usize, accum: usize, extra_env: &[(&str, &str)]) -> Run {
    train(world, &fixture_config(dir, Mode::Full, world, micro_batch, accum), "hf", extra_env)
}

#[test]
fn world_1_one_batch_of_four() {
    let run = train_fixture(&tiny(), 1, 4, 1, &[]);
    assert_full_ft_matches_reference(&tiny(), &run);
    // Counts of one read in the singular.
    let stdout = String::from_utf8_lossy(&run.output.stdout);
    assert!(stdout.contains("(4 per micro-batch x 1 accumulation x 1 rank) from 12 examples"), "{stdout}");
}

#[test]
fn world_1_four_accumulated_micro_batches() {
    assert_full_ft_matches_reference(&tiny(), &train_fixture(&tiny(), 1, 1, 4, &[]));
}

#[test]
fn world_2_micro_batches_of_two() {
    assert_full_ft_matches_reference(&tiny(), &train_fixture(&tiny(), 2, 2, 1, &[]));
}

#[test]
fn world_2_with_accumulation() {
    assert_full_ft_matches_reference(&tiny(), &train_fixture(&tiny(), 2, 1, 2, &[]));
}

#[test]
fn world_4() {
    assert_full_ft_matches_reference(&tiny(), &train_fixture(&tiny(), 4, 1, 1, &[]));
}

/// The sliding-window fixture: 6 examples per step over 3 ranks (and 1 rank with accumulation).
#[test]
fn world_3_on_the_sliding_window_fixture() {
    let dir = fixtures().join("tiny-mistral-window");
    assert_full_ft_matches_reference(&dir, &train_fixture(&dir, 3, 2, 1, &[]));
    assert_full_ft_matches_reference(&dir, &train_fixture(&dir, 1, 3, 2, &[]));
}

#[test]
fn the_same_run_twice_exports_the_same_bits() {
    let a = train_fixture(&tiny(), 2, 1, 2, &[]);
    let b = train_fixture(&tiny(), 2, 1, 2, &[]);
    assert!(a.output.status.success() && b.output.status.success());
    let read = |run: &Run| std::fs::read(run.out_dir.join("final/model.safetensors")).unwrap();
    assert!(read(&a) == read(&b), "exports differ");
    let losses = |run: &Run| run.tiny_metrics().iter().map(|m| m["loss"].as_f64().unwrap()).collect::<Vec<_>>();
    assert_eq!(losses(&a), losses(&b));
}

/// Padded flat sizes of every unit, from the model's shapes alone.
fn padded_unit_sizes(cfg: &MistralConfig, world: usize) -> Vec<u64> {
    Block::all(cfg)
        .iter()
        .map(|b| {
            let numel: u64 = b.params(cfg).iter().map(|p| p.shape.iter().product::<usize>() as u64).sum();
            numel.div_ceil(world as u64) * world as u64
        })
        .collect()
}

/// Per micro-batch, the engine all-gathers every unit for forward and again every unit but the
/// head (whose forward and backward run together) for backward, and reduce-scatters every
/// unit's gradient once: two all-gathers and one reduce-scatter of the padded model, less one
/// gather of the head.
#[test]
fn bytes_moved_per_step_are_zero3s() {
    let cfg = MistralConfig::from_file(&tiny().join("config.json")).unwrap();
    for (world, micro_batch, accum) in [(1, 2, 2), (2, 1, 2), (4, 1, 1)] {
        let run = train_fixture(&tiny(), world, micro_batch, accum, &[]);
        assert!(run.output.status.success(), "{}", run.stderr());
        let sizes = padded_unit_sizes(&cfg, world);
        let model: u64 = sizes.iter().sum();
        let head = *sizes.last().unwrap();
        let gathered = (2 * model - head) * 4 * accum as u64;
        let scattered = model * 4 * accum as u64;
        for m in run.tiny_metrics() {
            assert_eq!(m["bytes_all_gathered"].as_u64().unwrap(), gathered, "world {world}");
            assert_eq!(m["bytes_reduce_scattered"].as_u64().unwrap(), scattered, "world {world}");
        }
    }
}

/// Between steps a rank holds its f32 shard, Adam m and v and its f32 gradient shard: 16 bytes
/// per element of its slice, which falls as 1/N.
#[test]
fn model_state_bytes_fall_as_one_over_n() {
    let cfg = MistralConfig::from_file(&tiny().join("config.json")).unwrap();
    let mut per_world = Vec::new();
    for (world, micro_batch) in [(1, 4), (2, 2), (4, 1)] {
        let run = train_fixture(&tiny(), world, micro_batch, 1, &[]);
        assert!(run.output.status.success(), "{}", run.stderr());
        let expected: u64 = padded_unit_sizes(&cfg, world).iter().map(|p| p / world as u64 * 16).sum();
        let held = run.metrics()[0]["model_state_bytes"].as_u64().unwrap();
        assert_eq!(held, expected, "world {world}");
        assert_eq!(
            held,
            shard_zero::state_footprint(&cfg, None, false, world, shard_zero::Dtype::F32).model_state_bytes,
            "the no-allocation accounting"
        );
        per_world.push(held as f64);
    }
    assert!((per_world[0] / per_world[1] - 2.0).abs() < 0.01 && (per_world[0] / per_world[2] - 4.0).abs() < 0.01, "{per_world:?}");
}

#[test]
fn a_failing_rank_ends_the_job_with_its_message() {
    for (spec, expected) in [("1:1", "injected failure on rank 1 before step 1"), ("2:0:panic", "injected panic on rank 2 before step 0")] {
        let tmp = tempfile::tempdir().unwrap();
        let config = write_config(tmp.path(), &fixture_config(&tiny(), Mode::Full, 4, 1, 1), &tmp.path().join("run"), "");
        let mut cmd = mpirun(4);
        cmd.args(["train", "--config", config.to_str().unwrap()]).env("SHARD_TRAIN_TEST_FAIL", spec);
        let (output, failed) = run_job_noting(&mut cmd, expected);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "the job should fail");
        let failed = failed.unwrap_or_else(|| panic!("stderr lacks {expected:?}:\n{stderr}"));
        // From the failing rank's message on, not from start-up: the others must not wait for it.
        assert!(failed.elapsed() < Duration::from_secs(30), "the job ended {:?} after the failure", failed.elapsed());
    }
}
