//! Hybrid sharding (`runtime.shard_size = k`): shard groups of k consecutive ranks each shard
//! one copy of the model, their grad shards summed across the groups before clipping. Any split
//! trains like one big batch (the transformers references); each rank holds what a rank of a
//! k-rank run holds; one group writes the saves; bad sizes are refused before anything loads.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::*;
use shard_checkpoint::HfCheckpoint;

/// The fixture in `dir` trained as its reference says, on `world` ranks in groups of `shard_size`.
fn train_in_groups(dir: &Path, world: usize, micro_batch: usize, accum: usize, shard_size: &str) -> Run {
    let config = format!("{}[runtime]\nshard_size = {shard_size}\n", fixture_config(dir, Mode::Full, world, micro_batch, accum));
    train(world, &config, "hf", &[])
}

fn metric(run: &Run, key: &str) -> u64 {
    run.metrics()[0][key].as_u64().unwrap_or_else(|| panic!("{key} in metrics.jsonl"))
}

/// The model states of a rank of a shard group of `group` ranks, from the checkpoint in `dir` and
/// ZeRO-3's rule alone (not from the planner or the engine): each block (the embedding, each
/// decoder layer, the final norm with the head) flattened, padded to a multiple of the group and
/// split; 16 bytes per trained element (f32 master, Adam m and v, f32 gradient).
fn states_by_hand(dir: &Path, group: u64) -> u64 {
    let checkpoint = HfCheckpoint::open(dir).unwrap();
    let mut blocks: BTreeMap<String, u64> = BTreeMap::new();
    for name in checkpoint.names() {
        let block = match name.strip_prefix("model.layers.") {
            Some(rest) => rest.split('.').next().unwrap().to_owned(),
            None if name.starts_with("model.embed_tokens.") => "embedding".to_owned(),
            None => "head".to_owned(),
        };
        *blocks.entry(block).or_default() += checkpoint.read_f32(name).unwrap().len() as u64;
    }
    blocks.values().map(|numel| numel.div_ceil(group) * 16).sum()
}

/// Two groups of two: each rank holds what a rank of a 2-rank run holds and moves within its
/// group what that rank moves; across groups it all-reduces its f32 grad shards once a step.
#[test]
fn world_4_in_groups_of_2() {
    let run = train_in_groups(&tiny(), 4, 1, 1, "2");
    assert_full_ft_matches_reference(&tiny(), &run);
    let zero3_on_2 = train(2, &fixture_config(&tiny(), Mode::Full, 2, 2, 1), "none", &[]);
    zero3_on_2.assert_success();
    assert_eq!(metric(&run, "model_state_bytes"), metric(&zero3_on_2, "model_state_bytes"));
    assert_eq!(metric(&run, "model_state_bytes"), states_by_hand(&tiny(), 2));
    // A micro-batch of 1 here against 2 there: the same units gathered and scattered.
    assert_eq!(metric(&run, "bytes_all_gathered"), metric(&zero3_on_2, "bytes_all_gathered"));
    assert_eq!(metric(&run, "bytes_reduce_scattered"), metric(&zero3_on_2, "bytes_reduce_scattered"));
    let grad_shard_bytes = metric(&zero3_on_2, "bytes_reduce_scattered") / 2;
    assert_eq!(metric(&run, "bytes_all_reduced_across_groups"), grad_shard_bytes, "one f32 grad shard per step");
    assert_eq!(metric(&zero3_on_2, "bytes_all_reduced_across_groups"), 0, "one group: no replicas");

    let header = String::from_utf8_lossy(&run.output.stdout);
    assert!(header.contains("shard groups: 2 of 2 consecutive ranks, each rank holding 1/2 of the model states"), "{header}");
    assert!(header.contains("all-reduce of the grad shards (each step): across the 2 groups"), "{header}");

    // The first group wrote the save, as a 2-rank run would.
    let save = run.out_dir.join("checkpoints/step-0000003");
    let state: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(save.join("train_state.json")).unwrap()).unwrap();
    assert_eq!(state["world_size"], 2);
    let rank_files =
        std::fs::read_dir(&save).unwrap().filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().starts_with("rank-")).count();
    assert_eq!(rank_files, 2, "{}", save.display());
}

/// Groups of one: plain data parallelism, with gradient accumulation.
#[test]
fn world_2_in_groups_of_1_with_accumulation() {
    let run = train_in_groups(&tiny(), 2, 1, 2, "1");
    assert_full_ft_matches_reference(&tiny(), &run);
    // A group of one holds the whole model: 16 bytes for each of the checkpoint's parameters.
    assert_eq!(metric(&run, "model_state_bytes"), states_by_hand(&tiny(), 1));
}

/// An odd split: 6 ranks in 2 groups of 3, on the sliding-window fixture (6 examples a step).
#[test]
fn world_6_in_groups_of_3() {
    let dir = fixtures().join("tiny-mistral-window");
    assert_full_ft_matches_reference(&dir, &train_in_groups(&dir, 6, 1, 1, "3"));
}

/// `"node"`: here every rank is on one node, so one group of every rank.
#[test]
fn node_groups_on_one_machine_are_zero3() {
    let run = train_in_groups(&tiny(), 2, 2, 1, "\"node\"");
    assert_losses_match(&tiny(), Mode::Full, &run);
    assert!(String::from_utf8_lossy(&run.output.stdout).contains("shard groups: 1 of 2 consecutive ranks"));
}

#[test]
fn shard_sizes_the_world_cannot_take_are_refused_before_loading() {
    for (shard_size, expected) in [
        ("3", "runtime.shard_size = 3 does not split the job's 4 ranks into equal groups: use a divisor of 4"),
        ("8", "runtime.shard_size = 8 is more than the job's 4 rank(s)"),
        ("0", "`runtime.shard_size` = 0: a shard group needs at least 1 rank"),
        ("\"nodes\"", "a number of ranks or \"node\""),
    ] {
        let run = train_in_groups(&tiny(), 4, 1, 1, shard_size);
        assert!(!run.output.status.success(), "shard_size = {shard_size} should be refused");
        let stderr = run.stderr();
        assert!(stderr.contains(expected), "shard_size = {shard_size}: {stderr}");
        assert!(!run.out_dir.join("data").exists(), "refused before the data was prepared");
    }
}

/// A save of groups of 2 (4 ranks, interrupted after 2 of 4 steps) resumed as plain ZeRO-3 on 4
/// ranks: the run the uninterrupted ZeRO-3 run is.
#[test]
fn resume_at_another_shard_size() {
    let steps = reference_json(&tiny())["steps"].as_u64().unwrap();
    let four_steps = |shard_size: &str| {
        let config = fixture_config(&tiny(), Mode::Full, 4, 1, 1).replace(&format!("\nsteps = {steps}\n"), "\nsteps = 4\n");
        format!("{config}[runtime]\nshard_size = {shard_size}\n")
    };
    let whole = train(4, &four_steps("4"), "hf", &[]);
    whole.assert_success();
    let first = train(4, &four_steps("2"), "hf", &[("SHARD_TRAIN_TEST_INTERRUPT_AFTER", "2")]);
    first.assert_success();
    assert_eq!(first.metrics().len(), 2, "stopped after step 2");

    let config = format!("{}\n[output]\ndir = {:?}\nexport = \"hf\"\n", four_steps("4"), first.out_dir);
    let path = first.out_dir.parent().unwrap().join("resume.toml");
    std::fs::write(&path, config).unwrap();
    let mut cmd = mpirun(4);
    cmd.args(["--config", path.to_str().unwrap(), "--resume", "latest"]);
    let resumed = run_job(&mut cmd);
    assert!(resumed.status.success(), "{}", String::from_utf8_lossy(&resumed.stderr));
    let (ours, theirs) = (first.export(), whole.export());
    for name in theirs.names() {
        assert_close_params(
            name,
            &ours.read_f32(name).unwrap(),
            &theirs.read_f32(name).unwrap(),
            ParamTolerance::f32_training(&tiny(), Mode::Full),
        );
    }
    for (a, b) in first.metrics_of_steps(4).iter().zip(whole.metrics_of_steps(4)) {
        assert!((a["loss"].as_f64().unwrap() - b["loss"].as_f64().unwrap()).abs() < 1e-5, "{a} vs {b}");
    }
}
