//! Sharded saves and resumes: a resumed run is the uninterrupted run (bit for bit at the same
//! world size, within the fixture tolerances at another), a rank killed mid-save loses nothing,
//! SIGTERM saves and exits 0, exports stream a unit at a time, and bad checkpoints are named.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;
use shard_checkpoint::HfCheckpoint;

fn export_kind(mode: Mode) -> &'static str {
    if mode == Mode::Full { "hf" } else { "peft" }
}

/// The bytes of the exported weights.
fn exported_bytes(run: &Run) -> Vec<u8> {
    let dir = run.out_dir.join("final");
    let file = if dir.join("adapter_model.safetensors").exists() { "adapter_model.safetensors" } else { "model.safetensors" };
    std::fs::read(dir.join(file)).unwrap()
}

/// metrics.jsonl without the timing fields.
fn metrics_without_timing(run: &Run) -> Vec<serde_json::Value> {
    run.metrics()
        .into_iter()
        .map(|mut m| {
            let obj = m.as_object_mut().unwrap();
            obj.remove("seconds");
            obj.remove("tokens_per_s");
            obj.remove("exposed_comm_s");
            obj.remove("timestamp");
            m
        })
        .collect()
}

#[test]
fn stop_save_and_resume_is_the_uninterrupted_run_bit_for_bit() {
    for mode in [Mode::Full, Mode::Lora] {
        let cfg = config(&tiny(), mode, 2, 2, 4);
        let whole = train(2, &cfg, export_kind(mode), &[]);
        whole.assert_success();
        let halves = train(2, &cfg, export_kind(mode), &[("SHARD_TRAIN_TEST_INTERRUPT_AFTER", "2")]);
        halves.assert_success();
        assert_eq!(halves.metrics().len(), 2, "{mode:?}: stopped after step 2");
        assert!(!halves.out_dir.join("final").exists(), "an interrupted run does not export");
        let resumed = halves.resume(2, &cfg, export_kind(mode));
        assert!(resumed.status.success(), "{}", String::from_utf8_lossy(&resumed.stderr));
        assert!(exported_bytes(&whole) == exported_bytes(&halves), "{mode:?}: exports differ");
        assert_eq!(metrics_without_timing(&whole), metrics_without_timing(&halves), "{mode:?}");
    }
}

/// Resumes at another world size against the uninterrupted run.
fn assert_reshards(dir: &Path, mode: Mode, (world_a, mb_a): (usize, usize), (world_b, mb_b): (usize, usize)) {
    let whole = train(world_b, &config(dir, mode, world_b, mb_b, 4), export_kind(mode), &[]);
    whole.assert_success();
    let first = train(world_a, &config(dir, mode, world_a, mb_a, 4), export_kind(mode), &[("SHARD_TRAIN_TEST_INTERRUPT_AFTER", "2")]);
    first.assert_success();
    let resumed = first.resume(world_b, &config(dir, mode, world_b, mb_b, 4), export_kind(mode));
    assert!(resumed.status.success(), "{}", String::from_utf8_lossy(&resumed.stderr));
    let (ours, theirs) = (first.export(), whole.export());
    let tolerance = ParamTolerance::f32_training(dir, mode);
    for name in theirs.names() {
        assert_close_params(name, &ours.read_f32(name).unwrap(), &theirs.read_f32(name).unwrap(), tolerance);
    }
    for (a, b) in first.metrics_of_steps(4).iter().zip(whole.metrics_of_steps(4)) {
        assert!((a["loss"].as_f64().unwrap() - b["loss"].as_f64().unwrap()).abs() < 1e-5, "{mode:?}: {a} vs {b}");
    }
}

#[test]
fn resume_on_another_world_size() {
    for mode in [Mode::Full, Mode::Lora] {
        assert_reshards(&tiny(), mode, (4, 1), (2, 2));
        assert_reshards(&fixtures().join("tiny-mistral-window"), mode, (1, 6), (3, 2));
    }
}

#[test]
fn a_rank_killed_mid_save_leaves_the_previous_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let cfg = config(&tiny(), Mode::Full, 2, 2, 4);
    let path = write_config(tmp.path(), &cfg, &out, "save_every = 1\n");
    let job = spawn_train(2, &path, &[("SHARD_TRAIN_TEST_HOLD_SAVE", "3")]);
    kill_rank_1_mid_save(job, &out);

    let checkpoints = out.join("checkpoints");
    assert!(checkpoints.join("step-0000002/COMPLETE").exists(), "the previous checkpoint stays complete");
    // The unfinished save is in its work directory; no step-0000003 exists until one is whole.
    assert!(!checkpoints.join("step-0000003").exists());
    let partial = std::fs::read_dir(&checkpoints)
        .unwrap()
        .filter_map(Result::ok)
        .any(|e| e.file_name().to_string_lossy().starts_with(".partial-step-0000003-"));
    assert!(partial, "the unfinished save of step 3 is left in .partial-step-0000003-*");
    assert_eq!(std::fs::read_to_string(checkpoints.join("latest")).unwrap().trim(), "step-0000002");

    let mut cmd = mpirun(2);
    cmd.args(["train", "--config", path.to_str().unwrap(), "--resume", "latest"]);
    let resumed = run_job(&mut cmd);
    let stderr = String::from_utf8_lossy(&resumed.stderr);
    assert!(resumed.status.success(), "{stderr}");
    assert!(stderr.contains("removed incomplete checkpoint") && stderr.contains("step-0000003"), "{stderr}");
    let whole = train(2, &cfg, "hf", &[]);
    let ours = std::fs::read(out.join("final/model.safetensors")).unwrap();
    assert!(ours == exported_bytes(&whole), "the resumed run differs from the uninterrupted one");
}

#[test]
fn sigterm_saves_and_exits_zero_and_the_resume_continues_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let long = config(&tiny(), Mode::Full, 2, 2, 1000);
    let path = write_config(tmp.path(), &long, &out, "export = \"none\"\n");
    let job = spawn_train(2, &path, &[]);
    let metrics = out.join("metrics.jsonl");
    wait_for("a first step", Duration::from_secs(60), || std::fs::read_to_string(&metrics).is_ok_and(|m| m.lines().count() >= 2));
    // As SLURM's scancel does: SIGTERM to every rank (mpirun itself would kill them at once).
    for rank in children_of(job.id()) {
        Command::new("kill").args(["-TERM", &rank.to_string()]).status().unwrap();
    }
    let output = job.wait_with_output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let latest = std::fs::read_to_string(out.join("checkpoints/latest")).unwrap();
    let stopped_at: u64 = latest.trim().trim_start_matches("step-").parse().unwrap();
    assert!((2..1000).contains(&stopped_at), "stopped after step {stopped_at}");

    // Resume to stopped_at + 2 steps, against an uninterrupted run of as many steps.
    let total = stopped_at + 2;
    let cfg = config(&tiny(), Mode::Full, 2, 2, total);
    let path = write_config(tmp.path(), &cfg, &out, "export = \"hf\"\n");
    let mut cmd = mpirun(2);
    cmd.args(["train", "--config", path.to_str().unwrap(), "--resume", "latest"]);
    let resumed = run_job(&mut cmd);
    assert!(resumed.status.success(), "{}", String::from_utf8_lossy(&resumed.stderr));
    let whole = train(2, &cfg, "hf", &[]);
    assert!(std::fs::read(out.join("final/model.safetensors")).unwrap() == exported_bytes(&whole));
}

/// Runs `shard-train export` and returns its stdout.
fn export(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_shard-train")).arg("export").args(args).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

#[test]
fn offline_exports_equal_the_engines() {
    for mode in [Mode::Full, Mode::Lora] {
        let run = train(2, &config(&tiny(), mode, 2, 2, 2), export_kind(mode), &[]);
        run.assert_success();
        let out = run.out_dir.parent().unwrap().join("exported");
        let format = export_kind(mode);
        let (ok, _, stderr) = export(&["--checkpoint", run.out_dir.to_str().unwrap(), "--out", out.to_str().unwrap(), "--format", format]);
        assert!(ok, "{stderr}");
        let file = if mode == Mode::Full { "model.safetensors" } else { "adapter_model.safetensors" };
        assert!(std::fs::read(out.join(file)).unwrap() == exported_bytes(&run), "{mode:?}");
        if mode == Mode::Lora {
            // The merged model from the save equals the one the engine merges at the end.
            let merged_run = train(2, &config(&tiny(), mode, 2, 2, 2), "hf", &[]);
            merged_run.assert_success();
            let merged = run.out_dir.parent().unwrap().join("merged");
            let (ok, _, stderr) =
                export(&["--checkpoint", run.out_dir.to_str().unwrap(), "--out", merged.to_str().unwrap(), "--format", "merged"]);
            assert!(ok, "{stderr}");
            assert!(std::fs::read(merged.join("model.safetensors")).unwrap() == exported_bytes(&merged_run));
        }
    }
}

/// `export --out` never removes what an export did not write: the run directory, `.`, `..` and a
/// directory with other files are refused and keep every file; with `--overwrite` only the
/// export's own files are replaced. An earlier export is replaced atomically: a kill just before or
/// just after the swap leaves one whole export, the old or the new.
#[test]
fn export_never_removes_what_it_did_not_write() {
    let run = train(2, &config(&tiny(), Mode::Full, 2, 2, 2), "none", &[]);
    run.assert_success();
    let checkpoint = run.out_dir.to_str().unwrap();
    let listing = |dir: &Path| {
        let mut names: Vec<String> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into()).collect();
        names.sort();
        names
    };
    let run_files = listing(&run.out_dir);
    assert!(run_files.contains(&"metrics.jsonl".to_owned()) && run_files.contains(&"checkpoints".to_owned()), "{run_files:?}");
    let (ok, _, stderr) = export(&["--checkpoint", checkpoint, "--out", checkpoint]);
    assert!(!ok && stderr.contains("may not replace"), "{stderr}");
    assert_eq!(listing(&run.out_dir), run_files);

    let work = run.out_dir.parent().unwrap().join("work/sub");
    std::fs::create_dir_all(&work).unwrap();
    std::fs::write(work.join("notes.txt"), "mine").unwrap();
    for out in [".", ".."] {
        let refused = Command::new(env!("CARGO_BIN_EXE_shard-train"))
            .current_dir(&work)
            .args(["export", "--checkpoint", checkpoint, "--out", out])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&refused.stderr);
        assert!(!refused.status.success() && err.contains("working directory"), "--out {out}: {err}");
        assert_eq!(listing(&work), ["notes.txt"], "--out {out}");
        assert_eq!(listing(work.parent().unwrap()), ["sub"], "--out {out}");
    }

    let (ok, _, stderr) = export(&["--checkpoint", checkpoint, "--out", work.to_str().unwrap()]);
    assert!(!ok && stderr.contains("notes.txt") && stderr.contains("--overwrite"), "{stderr}");
    let (ok, _, stderr) = export(&["--checkpoint", checkpoint, "--out", work.to_str().unwrap(), "--overwrite"]);
    assert!(ok, "{stderr}");
    assert_eq!(listing(&work), ["config.json", "model.safetensors", "notes.txt"]);
    assert_eq!(std::fs::read_to_string(work.join("notes.txt")).unwrap(), "mine");

    let out = run.out_dir.parent().unwrap().join("exported");
    let export_as = |dtype: &str, abort_at: Option<&str>| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_shard-train"));
        cmd.args(["export", "--checkpoint", checkpoint, "--out", out.to_str().unwrap(), "--dtype", dtype]);
        if let Some(point) = abort_at {
            cmd.env("SHARD_TRAIN_TEST_OUT_DIR_ABORT", point);
        }
        cmd.output().unwrap().status.success()
    };
    let weights = || std::fs::read(out.join("model.safetensors")).unwrap();
    assert!(export_as("f32", None));
    let f32_export = weights();
    assert!(!export_as("bf16", Some("before-swap")), "killed before the swap");
    assert!(weights() == f32_export, "the old export is whole");
    assert!(!export_as("bf16", Some("after-swap")), "killed after the swap");
    let bf16_export = weights();
    assert!(bf16_export != f32_export && bf16_export.len() < f32_export.len(), "the new export is whole");
    assert!(export_as("f32", None));
    assert!(weights() == f32_export);
    assert_eq!(listing(&out), ["config.json", "model.safetensors"]);
    let left: Vec<String> = listing(out.parent().unwrap()).into_iter().filter(|n| n.starts_with(".exported")).collect();
    assert!(left.is_empty(), "the killed exports' staging directories are cleared by the next: {left:?}");
}

/// The medium preset (200.8 M parameters) on 4 ranks: `export` peaks under twice the largest
/// unit plus a fixed overhead, and writes exactly what the engine exports.
#[test]
fn export_of_the_medium_preset_streams() {
    let preset = fixtures().join("presets/medium/config.json");
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data.jsonl");
    let rows: Vec<String> = (0..4)
        .map(|i| format!("{{\"input_ids\": [{}]}}", (0..16).map(|t| (3 + i * 16 + t).to_string()).collect::<Vec<_>>().join(", ")))
        .collect();
    std::fs::write(&data, rows.join("\n")).unwrap();
    let cfg = format!(
        "[model]\ninit = \"random\"\nconfig = {preset:?}\n[data]\npath = {data:?}\nseq_len = 16\nshuffle = false\n[train]\nsteps = 1\nmicro_batch_size = 1\nlr = 1e-4\n"
    );
    let run = train(4, &cfg, "hf", &[]);
    run.assert_success();
    let out = tmp.path().join("exported");
    let (ok, stdout, stderr) = export(&["--checkpoint", run.out_dir.to_str().unwrap(), "--out", out.to_str().unwrap(), "--dtype", "f32"]);
    assert!(ok, "{stderr}");
    let peak_mib: f64 = stdout.split("peak RSS ").nth(1).unwrap().split(' ').next().unwrap().parse().unwrap();
    let largest_unit_mib = (32000.0 * 1024.0 * 4.0) / (1 << 20) as f64; // the embedding, and lm_head
    const FIXED_OVERHEAD_MIB: f64 = 64.0; // the binary, its allocator and buffers
    assert!(peak_mib < 2.0 * largest_unit_mib + FIXED_OVERHEAD_MIB, "peak {peak_mib} MiB");

    let (ours, engine) = (HfCheckpoint::open(&out).unwrap(), run.export());
    for name in engine.names() {
        assert_eq!(ours.read_f32(name).unwrap(), engine.read_f32(name).unwrap(), "{name}");
    }
}

#[test]
fn bad_checkpoints_are_named() {
    let run = train(2, &config(&tiny(), Mode::Full, 2, 2, 2), "none", &[]);
    run.assert_success();
    let step = run.out_dir.join("checkpoints/step-0000002");
    let resume_err = |world: usize, cfg: &str| {
        let out = run.resume(world, cfg, "none");
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };

    // Another model.
    let window = config(&fixtures().join("tiny-mistral-window"), Mode::Full, 2, 3, 4);
    assert!(resume_err(2, &window).contains("was saved from another model"));

    // A truncated, then a missing rank file.
    let rank1 = step.join("rank-00001-of-00002.safetensors");
    let bytes = std::fs::read(&rank1).unwrap();
    std::fs::write(&rank1, &bytes[..bytes.len() / 2]).unwrap();
    let cfg = config(&tiny(), Mode::Full, 2, 2, 4);
    let err = resume_err(2, &cfg);
    assert!(err.contains("rank-00001-of-00002.safetensors") && err.contains("truncated"), "{err}");
    std::fs::remove_file(&rank1).unwrap();
    let err = resume_err(2, &cfg);
    assert!(err.contains("rank-00001-of-00002.safetensors"), "{err}");

    // A half-written checkpoint named explicitly, and as `latest` with nothing to fall back to.
    std::fs::remove_file(step.join("COMPLETE")).unwrap();
    let (ok, _, stderr) = export(&["--checkpoint", step.to_str().unwrap(), "--out", run.out_dir.join("x").to_str().unwrap()]);
    assert!(!ok && stderr.contains("step-0000002") && stderr.contains("COMPLETE"), "{stderr}");
    let err = resume_err(2, &cfg);
    assert!(err.contains("holds no complete checkpoint"), "{err}");
}

/// `save_at_end = false` (a benchmark's run) trains and exports but writes no save; `save_every`
/// still saves on its steps.
#[test]
fn save_at_end_false_leaves_only_the_periodic_saves() {
    let config = common::config(&tiny(), Mode::Full, 2, 2, 3);
    let run = train_with_output(2, &config, "export = \"none\"\nsave_at_end = false", &[]);
    run.assert_success();
    assert_eq!(run.metrics().len(), 3);
    // The directory is made (and probed) at start; no save is in it.
    let saves = |run: &Run| -> Vec<String> {
        let names =
            std::fs::read_dir(run.out_dir.join("checkpoints")).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned());
        names.filter(|n| n.starts_with("step-")).collect()
    };
    assert!(saves(&run).is_empty(), "no save after the last step: {:?}", saves(&run));
    assert!(run.out_dir.join("summary.json").exists());

    let run = train_with_output(2, &config, "export = \"none\"\nsave_at_end = false\nsave_every = 2", &[]);
    run.assert_success();
    assert_eq!(saves(&run), ["step-0000002"]);
}

/// A train_state.json whose per-rank lists do not match its `world_size` is named, key and value,
/// on export and on resume (they indexed past the lists' end and panicked).
#[test]
fn a_train_state_short_of_its_world_size_is_named() {
    let cfg = config(&tiny(), Mode::Full, 2, 2, 2);
    let run = train(2, &cfg, "none", &[]);
    run.assert_success();
    let state_path = run.out_dir.join("checkpoints/step-0000002/train_state.json");
    let mut state: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&state_path).unwrap()).unwrap();
    // Each list short, then both (the panic): the first short one is named.
    for keys in [&["rank_checksums"][..], &["rank_files"], &["rank_files", "rank_checksums"]] {
        let mut short = state.clone();
        for key in keys {
            short[key].as_array_mut().unwrap().pop();
        }
        let key = keys[0];
        std::fs::write(&state_path, serde_json::to_string(&short).unwrap()).unwrap();
        let named = |err: &str| err.contains("train_state.json") && err.contains(&format!("`{key}` lists 1 entries, `world_size` is 2"));
        let (ok, _, err) = export(&["--checkpoint", run.out_dir.to_str().unwrap(), "--out", run.out_dir.join("x").to_str().unwrap()]);
        assert!(!ok && named(&err) && !err.contains("panicked"), "{err}");
        let resumed = run.resume(2, &cfg, "none");
        let err = String::from_utf8_lossy(&resumed.stderr);
        assert!(!resumed.status.success() && named(&err) && !err.contains("panicked"), "{err}");
    }
    state["world_size"] = 0.into();
    std::fs::write(&state_path, serde_json::to_string(&state).unwrap()).unwrap();
    let (ok, _, err) = export(&["--checkpoint", run.out_dir.to_str().unwrap(), "--out", run.out_dir.join("x").to_str().unwrap()]);
    assert!(!ok && err.contains("`world_size` is 0") && !err.contains("panicked"), "{err}");
}

/// Every path a file names is read inside that file's directory: a model index's shard files, a
/// save's `rank_files`, and `checkpoints/latest` (a save of this run). Each was followed out of it.
#[test]
fn paths_that_lead_out_of_their_directory_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let refused = |(ok, _, err): (bool, String, String), what: &[&str]| {
        assert!(!ok && what.iter().all(|w| err.contains(w)) && err.contains("not inside"), "{err}");
    };

    // A model index naming a shard in a sibling directory.
    let (model, outside) = (tmp.path().join("model"), tmp.path().join("outside"));
    std::fs::create_dir_all(&model).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::copy(tiny().join("config.json"), model.join("config.json")).unwrap();
    std::fs::copy(tiny().join("model.safetensors"), outside.join("model.safetensors")).unwrap();
    let names: serde_json::Map<String, serde_json::Value> =
        HfCheckpoint::open(&tiny()).unwrap().names().map(|n| (n.to_owned(), "../outside/model.safetensors".into())).collect();
    let index = serde_json::json!({ "metadata": {}, "weight_map": names });
    std::fs::write(model.join("model.safetensors.index.json"), index.to_string()).unwrap();
    let quantized = Command::new(env!("CARGO_BIN_EXE_shard-train"))
        .args(["quantize", "--model", model.to_str().unwrap(), "--out", tmp.path().join("q").to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&quantized.stderr).into_owned();
    refused((quantized.status.success(), String::new(), err), &["model.safetensors.index.json", "../outside/model.safetensors"]);

    // A save's rank file named outside the save (a copy of the very file: everything else matches).
    let run = train(2, &config(&tiny(), Mode::Full, 2, 2, 2), "none", &[]);
    run.assert_success();
    let outside = run.out_dir.parent().unwrap().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    let step = run.out_dir.join("checkpoints/step-0000002");
    std::fs::copy(step.join("rank-00000-of-00002.safetensors"), outside.join("rank-0.safetensors")).unwrap();
    let state_path = step.join("train_state.json");
    let original = std::fs::read_to_string(&state_path).unwrap();
    let mut state: serde_json::Value = serde_json::from_str(&original).unwrap();
    let escaping = "../../../outside/rank-0.safetensors";
    assert!(step.join(escaping).is_file());
    state["rank_files"][0] = escaping.into();
    std::fs::write(&state_path, state.to_string()).unwrap();
    let export_of = |dir: &Path| export(&["--checkpoint", dir.to_str().unwrap(), "--out", tmp.path().join("x").to_str().unwrap()]);
    refused(export_of(&step), &["train_state.json", "rank_files", escaping]);
    std::fs::write(&state_path, original).unwrap();

    // Another run's `latest` naming this run's save, relative and absolute.
    let other = run.out_dir.parent().unwrap().join("other/checkpoints");
    std::fs::create_dir_all(&other).unwrap();
    for name in ["../../run/checkpoints/step-0000002".to_owned(), step.display().to_string()] {
        assert!(other.join(&name).join("COMPLETE").is_file());
        std::fs::write(other.join("latest"), format!("{name}\n")).unwrap();
        refused(export_of(other.parent().unwrap()), &["latest", &name]);
    }
}
