//! Faults an operator meets, each reproduced as it was seen: a save rewritten after a rollback and
//! killed half-way, a new run in a used output directory, a stopped rank, NaN weights, a signal
//! during start-up. See docs/saves-and-faults.md.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::*;
use shard_checkpoint::SavedCheckpoint;

/// `shard-train train --config PATH ARGS...` on `world` ranks, to the end.
fn train_with(world: usize, config: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = mpirun(world);
    cmd.args(["train", "--config", config.to_str().unwrap()]).args(args).envs(env.iter().copied());
    run_job(&mut cmd)
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn latest(out_dir: &Path) -> String {
    std::fs::read_to_string(out_dir.join("checkpoints/latest")).unwrap().trim().to_owned()
}

fn save_id(step_dir: &Path) -> String {
    SavedCheckpoint::open(step_dir).unwrap().state().save_id.clone()
}

/// A save is whole: every rank file carries its id, and every checksum matches.
fn assert_sound(step_dir: &Path) {
    let saved = SavedCheckpoint::open(step_dir).unwrap_or_else(|e| panic!("{e}"));
    saved.verify_all().unwrap_or_else(|e| panic!("{e}"));
}

/// The saves under `checkpoints/` whose names start with `prefix`.
fn saves_named(out: &Path, prefix: &str) -> Vec<PathBuf> {
    let entries = std::fs::read_dir(out.join("checkpoints")).unwrap().filter_map(Result::ok);
    entries.filter(|e| e.file_name().to_string_lossy().starts_with(prefix)).map(|e| e.path()).collect()
}

/// A resume of an older save (step 2 of a run that reached step 4) makes it `latest` at once and
/// keeps the abandoned continuation's saves as `abandoned-step-*`: when the resumed run is killed
/// while it rewrites step 3, `--resume latest` continues from step 2 (before, from the abandoned
/// step 4), and every save stays whole.
#[test]
fn a_save_rewritten_after_a_rollback_and_killed_leaves_whole_saves() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let cfg = config(&tiny(), Mode::Full, 2, 2, 4);
    let first = write_config(tmp.path(), &cfg, &out, "save_every = 1\nkeep_last = 0\nexport = \"none\"\n");
    assert!(train_with(2, &first, &[], &[]).status.success());
    let old = |step: u64| save_id(&out.join(format!("checkpoints/step-{step:07}")));
    let (old_step_3, old_step_4) = (old(3), old(4));

    // Roll back to step 2 with another weight decay: steps 3 and 4 differ from the first run's.
    let wd = cfg.lines().find(|l| l.starts_with("weight_decay = ")).unwrap();
    let rollback_cfg = cfg.replace(wd, "weight_decay = 0.5");
    let rollback = tmp.path().join("rollback.toml");
    std::fs::write(&rollback, format!("{rollback_cfg}\n[output]\ndir = {out:?}\nsave_every = 1\nkeep_last = 0\nexport = \"hf\"\n"))
        .unwrap();
    let step_2 = out.join("checkpoints/step-0000002");

    // What the rolled-back run ends with when nothing goes wrong, in a directory of its own.
    let reference_dir = tmp.path().join("reference");
    let reference = tmp.path().join("reference.toml");
    std::fs::write(&reference, format!("{rollback_cfg}\n[output]\ndir = {reference_dir:?}\nexport = \"hf\"\n")).unwrap();
    let done = train_with(2, &reference, &["--resume", step_2.to_str().unwrap()], &[]);
    assert!(done.status.success(), "{}", stderr(&done));

    // The rolled-back run is killed while it rewrites step 3 (rank 1 dies with its file half done).
    let mut cmd = mpirun(2);
    cmd.args(["train", "--config", rollback.to_str().unwrap(), "--resume", step_2.to_str().unwrap()])
        .env("SHARD_TRAIN_TEST_HOLD_SAVE", "3");
    let job = cmd.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::piped()).spawn().unwrap();
    kill_rank_1_mid_save(job, &out);

    // `latest` names step 2, the newest save of the rolled-back run; the first run's steps 3 and 4
    // are kept whole under names that say so, and no step directory of theirs is left.
    assert_eq!(latest(&out), "step-0000002");
    assert!(saves_named(&out, "step-0000003").is_empty() && saves_named(&out, "step-0000004").is_empty());
    for (step, id) in [(3, &old_step_3), (4, &old_step_4)] {
        let kept = saves_named(&out, &format!("abandoned-step-{step:07}-"));
        assert_eq!(kept.len(), 1, "step {step}: {kept:?}");
        assert_eq!(&save_id(&kept[0]), id);
        assert_sound(&kept[0]);
    }

    let resumed = train_with(2, &rollback, &["--resume", "latest"], &[]);
    let err = stderr(&resumed);
    assert!(resumed.status.success(), "{err}");
    let checkpoints = out.join("checkpoints");
    for step in [3, 4] {
        assert_sound(&checkpoints.join(format!("step-{step:07}")));
    }
    assert_ne!(save_id(&checkpoints.join("step-0000004")), old_step_4, "step 4 is the rolled-back run's");
    assert_eq!(saves_named(&out, "abandoned-").len(), 2, "the abandoned saves are kept, not pruned");
    let ours = std::fs::read(out.join("final/model.safetensors")).unwrap();
    assert!(
        ours == std::fs::read(reference_dir.join("final/model.safetensors")).unwrap(),
        "the resumed run differs from the uninterrupted one"
    );
}

/// The step directories and `latest` of a run, with their save ids.
fn saves_of(out: &Path) -> Vec<(String, String)> {
    let root = out.join("checkpoints");
    let mut saves: Vec<(String, String)> = std::fs::read_dir(&root)
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("step-"))
        .map(|e| (e.file_name().to_string_lossy().into_owned(), save_id(&e.path())))
        .collect();
    saves.sort();
    saves.push(("latest".into(), latest(out)));
    saves
}

#[test]
fn a_new_run_in_a_used_output_dir_is_refused_and_the_old_saves_stay() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let path =
        write_config(tmp.path(), &config(&tiny(), Mode::Full, 1, 4, 2), &out, "save_every = 1\nexport = \"none\"\ntensorboard = true\n");
    assert!(train_with(1, &path, &[], &[]).status.success());
    let before = saves_of(&out);

    let refused = train_with(2, &path, &[], &[]); // rank 0 alone claims output.dir; both ranks stop
    let err = stderr(&refused);
    assert!(!refused.status.success());
    assert!(!err.contains("MPI_ABORT"), "ended together, not aborted: {err}");
    assert!(
        err.contains("holds another run's files")
            && err.contains("metrics.jsonl")
            && err.contains("checkpoints")
            && err.contains("--overwrite"),
        "{err}"
    );
    assert_eq!(err.matches("error:").count(), 1, "one message: {err}");
    let printed = String::from_utf8_lossy(&refused.stdout);
    assert!(!printed.contains("f32 master"), "the refusal comes before the plan, not under it: {printed}");
    assert_eq!(saves_of(&out), before, "the old saves are untouched");

    // A live job's lock keeps another out (this test process stands for the live job).
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    std::fs::write(out.join("shard-train.lock"), format!("{} {}\n", host.trim(), std::process::id())).unwrap();
    let locked = train_with(1, &path, &["--resume", "latest"], &[]);
    assert!(!locked.status.success() && stderr(&locked).contains("in use by another job"), "{}", stderr(&locked));
    std::fs::remove_file(out.join("shard-train.lock")).unwrap();

    let overwritten = train_with(1, &path, &["--overwrite"], &[]);
    assert!(overwritten.status.success(), "{}", stderr(&overwritten));
    let after = saves_of(&out);
    assert_eq!(after.iter().map(|s| &s.0).collect::<Vec<_>>(), before.iter().map(|s| &s.0).collect::<Vec<_>>());
    assert!(after[..2].iter().zip(&before).all(|(a, b)| a.1 != b.1), "--overwrite made new saves");
    assert_eq!(std::fs::read_dir(out.join("tb")).unwrap().count(), 1, "the old run's TensorBoard events are gone");
    assert!(!out.join("shard-train.lock").exists(), "the lock goes with the run");
}

#[test]
fn a_stopped_rank_ends_the_job_within_the_deadline_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let cfg = format!("{}\n[runtime]\ntimeout_s = 20\n", config(&tiny(), Mode::Full, 2, 2, 100000));
    let path = write_config(tmp.path(), &cfg, &out, "export = \"none\"\n");
    let job = spawn_train(2, &path, &[]);
    let metrics = out.join("metrics.jsonl");
    wait_for("a first step", Duration::from_secs(60), || std::fs::read_to_string(&metrics).is_ok_and(|m| m.lines().count() >= 2));
    let rank_1 = children_of(job.id()).into_iter().find(|&pid| rank_of(pid) == Some(1)).expect("rank 1 under mpirun");
    assert!(Command::new("kill").args(["-STOP", &rank_1.to_string()]).status().unwrap().success());
    let stopped = Instant::now();
    let output = job.wait_with_output().unwrap();
    let waited = stopped.elapsed();
    let err = stderr(&output);
    assert!(!output.status.success(), "{err}");
    assert!(waited < Duration::from_secs(40), "the job ended {waited:?} after the stop");
    assert!(err.contains("watchdog") && err.contains("runtime.timeout_s = 20") && err.contains("for rank 1 ("), "{err}");
}

/// A copy of the tiny fixture whose `model.norm.weight` holds a NaN.
fn nan_model(dir: &Path) -> PathBuf {
    let model = dir.join("nan-model");
    std::fs::create_dir_all(&model).unwrap();
    for file in ["config.json", "model.safetensors", "data.jsonl", "reference.json"] {
        std::fs::copy(tiny().join(file), model.join(file)).unwrap();
    }
    let path = model.join("model.safetensors");
    let mut bytes = std::fs::read(&path).unwrap();
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + header_len]).unwrap();
    let entry = &header["model.norm.weight"];
    let at = 8 + header_len + entry["data_offsets"][0].as_u64().unwrap() as usize;
    match entry["dtype"].as_str().unwrap() {
        "F32" => bytes[at..at + 4].copy_from_slice(&f32::NAN.to_le_bytes()),
        "BF16" | "F16" => bytes[at..at + 2].copy_from_slice(&[0x00, 0x7e]), // a NaN in both
        other => panic!("dtype {other}"),
    }
    std::fs::write(&path, bytes).unwrap();
    model
}

/// Trains `config` on 2 ranks into `tmp/name`, which must fail; the output dir and stderr.
fn failing_run(tmp: &Path, name: &str, config: &str, extra_output: &str) -> (PathBuf, String) {
    let out = tmp.join(name);
    let failed = train_with(2, &write_config(tmp, config, &out, extra_output), &[], &[]);
    assert!(!failed.status.success());
    (out, stderr(&failed))
}

#[test]
fn non_finite_steps_stop_the_run_before_the_update_and_are_not_saved() {
    let tmp = tempfile::tempdir().unwrap();
    let model = nan_model(tmp.path());
    let cfg = config(&model, Mode::Full, 2, 2, 4);

    let (out, err) = failing_run(tmp.path(), "nan", &cfg, "save_every = 1\nexport = \"hf\"\n");
    assert!(err.contains("step 1: loss NaN") && err.contains("the update was not applied") && err.contains("on_nonfinite"), "{err}");
    assert_eq!(err.matches("error:").count(), 1, "one message: {err}");
    assert!(!out.join("checkpoints/latest").exists() && !out.join("final").exists(), "nothing is saved or exported");

    // Finite steps, then an update so large (lr 1e30) that step 2 overflows: the run ends there,
    // and `latest` still names step 1, the last finite save (keep_last = 1 rotated nothing out).
    let lr = cfg.lines().find(|l| l.starts_with("lr = ")).unwrap();
    let diverging = config(&tiny(), Mode::Full, 2, 2, 4).replace(lr, "lr = 1e30");
    let (out, err) = failing_run(tmp.path(), "diverging", &diverging, "save_every = 1\nkeep_last = 1\nexport = \"none\"\n");
    assert!(err.contains("step 2: loss") && err.contains("NaN") && err.contains("nothing of this step was saved"), "{err}");
    assert_eq!(latest(&out), "step-0000001");
    assert!(!out.join("checkpoints/step-0000002").exists());
    assert_sound(&out.join("checkpoints/step-0000001"));

    // Skipped, the run goes on until max_nonfinite_skips in a row.
    let skip = format!("{cfg}on_nonfinite = \"skip\"\nmax_nonfinite_skips = 2\n");
    let (out, err) = failing_run(tmp.path(), "skip", &skip, "save_every = 1\nexport = \"none\"\n");
    assert!(
        err.contains("step 1: loss NaN") && err.contains("step skipped (1 in a row") && err.contains("2 non-finite steps in a row"),
        "{err}"
    );
    // A skipped step applies no update; the save after it holds the state from before it.
    assert_eq!(latest(&out), "step-0000001");
    assert_sound(&out.join("checkpoints/step-0000001"));
}

/// A text dataset of about `mib` MiB, for a cache build of more than one chunk.
fn large_text_dataset(path: &Path, mib: usize) {
    let line = "{\"text\": \"The quick brown fox jumps over the lazy dog, again and again, while the cache is built.\"}\n";
    std::fs::write(path, line.repeat((mib << 20) / line.len())).unwrap();
}

#[test]
fn a_signal_during_the_cache_build_ends_the_job_cleanly() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("large.jsonl");
    large_text_dataset(&data, 4);
    let out = tmp.path().join("run");
    let cfg = format!(
        "[model]\ninit = \"random\"\nconfig = {:?}\n[data]\npath = {data:?}\nformat = \"text\"\ntokenizer = {:?}\nseq_len = 32\n[train]\nsteps = 2\n",
        fixtures().join("presets/small/config.json"),
        fixtures().join("tokenizer/mistral-7b-v0.1.tokenizer.json"),
    );
    let path = write_config(tmp.path(), &cfg, &out, "export = \"none\"\n");
    // The build waits at this gate, its temporary files written, until the signal stops it.
    let gate = tmp.path().join("cache-build.gate");
    let job = spawn_train(2, &path, &[("SHARD_TRAIN_TEST_CACHE_BUILD_GATE", gate.to_str().unwrap())]);
    let cache = out.join("data");
    let building =
        || std::fs::read_dir(&cache).is_ok_and(|d| d.filter_map(Result::ok).any(|e| e.file_name().to_string_lossy().contains(".tmp-")));
    wait_for("the cache build", job_limit(), || gate.exists());
    assert!(building(), "the build's temporary files exist at the gate");
    // OpenMPI forwards SIGUSR1 from mpirun to every rank.
    assert!(Command::new("kill").args(["-USR1", &job.id().to_string()]).status().unwrap().success());
    let output = job.wait_with_output().unwrap();
    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(75), "{err}");
    assert!(err.contains("stopped by SIGUSR1 during start-up") && err.contains("nothing was trained or saved"), "{err}");
    assert_eq!(err.matches("stopped by").count(), 1, "one message: {err}");
    assert!(!building(), "the build's temporary files are removed");
    assert!(!out.join("checkpoints/latest").exists() && !out.join("shard-train.lock").exists());
}

/// Flips one byte in the middle of a file.
fn corrupt(path: &Path) {
    let mut bytes = std::fs::read(path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn a_damaged_save_is_skipped_from_latest_and_named_when_named() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let path = write_config(tmp.path(), &config(&tiny(), Mode::Full, 2, 2, 2), &out, "save_every = 1\nexport = \"none\"\n");
    assert!(train_with(2, &path, &[], &[]).status.success());
    let damaged = out.join("checkpoints/step-0000002/rank-00001-of-00002.safetensors");
    corrupt(&damaged);

    let named = out.join("checkpoints/step-0000002");
    let refused = train_with(2, &path, &["--resume", named.to_str().unwrap()], &[]);
    let err = stderr(&refused);
    assert!(!refused.status.success() && err.contains("rank-00001-of-00002.safetensors is damaged") && err.contains("checksum"), "{err}");
    assert_eq!(err.matches("error:").count(), 1, "one message: {err}");
    let export = Command::new(env!("CARGO_BIN_EXE_shard-train"))
        .args(["export", "--checkpoint", named.to_str().unwrap(), "--out"])
        .arg(tmp.path().join("x"))
        .output()
        .unwrap();
    assert!(!export.status.success() && stderr(&export).contains("rank-00001-of-00002.safetensors is damaged"), "{}", stderr(&export));

    let longer = write_config(tmp.path(), &config(&tiny(), Mode::Full, 2, 2, 3), &out, "save_every = 1\nexport = \"none\"\n");
    let resumed = train_with(2, &longer, &["--resume", "latest"], &[]);
    let err = stderr(&resumed);
    assert!(resumed.status.success(), "{err}");
    assert!(err.contains("is damaged") && err.contains("resuming from") && err.contains("step-0000001 instead"), "{err}");
    assert_eq!(latest(&out), "step-0000003");
}

#[test]
fn a_resume_refuses_another_lora_base_and_a_changed_schedule() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let cfg = config(&tiny(), Mode::Lora, 2, 2, 2);
    let path = write_config(tmp.path(), &cfg, &out, "export = \"none\"\n");
    assert!(train_with(2, &path, &[], &[]).status.success());
    let longer = config(&tiny(), Mode::Lora, 2, 2, 4);

    // The same config.json, other weights.
    let other = tmp.path().join("other-base");
    std::fs::create_dir_all(&other).unwrap();
    for file in ["config.json", "model.safetensors", "data.jsonl", "reference.json"] {
        std::fs::copy(tiny().join(file), other.join(file)).unwrap();
    }
    corrupt(&other.join("model.safetensors"));
    let on_other = write_config(
        tmp.path(),
        &longer.replace(&format!("path = {:?}", tiny()), &format!("path = {other:?}")),
        &out,
        "export = \"none\"\n",
    );
    let refused = train_with(2, &on_other, &["--resume", "latest"], &[]);
    assert!(!refused.status.success() && stderr(&refused).contains("holds other weights"), "{}", stderr(&refused));

    let lr = cfg.lines().find(|l| l.starts_with("lr = ")).unwrap();
    let new_lr = write_config(tmp.path(), &longer.replace(lr, "lr = 0.5"), &out, "export = \"none\"\n");
    let refused = train_with(2, &new_lr, &["--resume", "latest"], &[]);
    let err = stderr(&refused);
    assert!(!refused.status.success() && err.contains("train.lr: saved") && err.contains("--allow-schedule-change"), "{err}");
    let allowed = train_with(2, &new_lr, &["--resume", "latest", "--allow-schedule-change"], &[]);
    assert!(allowed.status.success(), "{}", stderr(&allowed));
}

#[test]
fn start_up_checks_name_what_is_wrong_and_warn_of_repeats() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("checkpoints"), "a file where the saves should go").unwrap();
    let cfg = format!(
        "[model]\npath = {:?}\n[data]\npath = {:?}\nseq_len = 16\n[train]\nsteps = 1\nmicro_batch_size = 16\n",
        tiny(),
        tiny().join("data.jsonl")
    );
    let path = write_config(tmp.path(), &cfg, &out, "export = \"none\"\n");
    let refused = train_with(1, &path, &[], &[]);
    let err = stderr(&refused);
    assert!(!refused.status.success() && err.contains("cannot write to") && err.contains("checkpoints"), "{err}");
    assert!(!err.contains("tokenizing"), "found before the data is read: {err}");

    std::fs::remove_file(out.join("checkpoints")).unwrap();
    let repeated = train_with(1, &path, &[], &[]);
    let err = stderr(&repeated);
    assert!(
        repeated.status.success() && err.contains("a step takes 16 examples") && err.contains("examples repeat within a step"),
        "{err}"
    );

    // A JSON file that is not a tokenizer is named as such, not with a bare parse error.
    let text = cfg.replace("[data]\n", &format!("[data]\nformat = \"text\"\ntokenizer = {:?}\n", tiny().join("config.json")));
    let path = write_config(tmp.path(), &text, &tmp.path().join("text"), "export = \"none\"\n");
    let refused = train_with(1, &path, &[], &[]);
    assert!(
        !refused.status.success() && stderr(&refused).contains("valid JSON, but not a Hugging Face tokenizer.json"),
        "{}",
        stderr(&refused)
    );
}

/// The steps recorded in `out`'s metrics.jsonl, line by line.
fn metric_steps(out: &Path) -> Vec<u64> {
    let text = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    text.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["step"].as_u64().unwrap()).collect()
}

#[test]
fn metrics_are_only_appended_and_a_failed_resume_leaves_them() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let path = write_config(tmp.path(), &config(&tiny(), Mode::Full, 2, 2, 2), &out, "save_every = 1\nexport = \"none\"\n");
    assert!(train_with(2, &path, &[], &[]).status.success());
    let metrics = out.join("metrics.jsonl");
    let before = std::fs::read(&metrics).unwrap();
    assert_eq!(metric_steps(&out), [1, 2]);

    // Rank 0 fails before step 3 of the resumed run; the job ends with MPI_Abort.
    let longer = write_config(tmp.path(), &config(&tiny(), Mode::Full, 2, 2, 4), &out, "save_every = 1\nexport = \"none\"\n");
    let failed = train_with(2, &longer, &["--resume", "latest"], &[("SHARD_TRAIN_TEST_FAIL", "0:2")]);
    assert!(!failed.status.success() && stderr(&failed).contains("injected failure on rank 0"), "{}", stderr(&failed));
    assert!(std::fs::read(&metrics).unwrap() == before, "metrics.jsonl is as it was");

    // Resumed from the older save, the run appends its steps after the ones it repeats.
    let step_1 = out.join("checkpoints/step-0000001");
    let resumed = train_with(2, &longer, &["--resume", step_1.to_str().unwrap()], &[]);
    assert!(resumed.status.success(), "{}", stderr(&resumed));
    assert_eq!(metric_steps(&out), [1, 2, 2, 3, 4]);
    assert!(std::fs::read(&metrics).unwrap().starts_with(&before));

    // A full disk names the file (and says the reason once).
    std::fs::remove_file(&metrics).unwrap();
    std::os::unix::fs::symlink("/dev/full", &metrics).unwrap();
    let five = write_config(tmp.path(), &config(&tiny(), Mode::Full, 2, 2, 5), &out, "export = \"none\"\n");
    let full = train_with(2, &five, &["--resume", "latest"], &[]);
    let err = stderr(&full);
    assert!(!full.status.success() && err.contains(&format!("cannot append to {}", metrics.display())), "{err}");
    assert_eq!(err.matches("No space left on device").count(), 1, "{err}");
}

#[test]
fn a_lock_left_by_a_zombie_or_a_dead_rank_0_is_taken_over() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let path = write_config(tmp.path(), &config(&tiny(), Mode::Full, 1, 4, 1), &out, "export = \"none\"\n");
    assert!(train_with(1, &path, &[], &[]).status.success());
    let longer = write_config(tmp.path(), &config(&tiny(), Mode::Full, 1, 4, 2), &out, "export = \"none\"\n");
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();

    // A rank 0 killed with -9 whose parent has not reaped it yet: a zombie, /proc/PID still there.
    let mut zombie = Command::new("true").spawn().unwrap();
    let stat = format!("/proc/{}/stat", zombie.id());
    wait_for("the zombie", Duration::from_secs(10), || std::fs::read_to_string(&stat).is_ok_and(|s| s.contains(") Z ")));
    std::fs::write(out.join("shard-train.lock"), format!("{} {}\n", host.trim(), zombie.id())).unwrap();
    let resumed = train_with(1, &longer, &["--resume", "latest"], &[]);
    let err = stderr(&resumed);
    assert!(resumed.status.success() && err.contains(&format!("was left by pid {}, which is gone", zombie.id())), "{err}");
    zombie.wait().unwrap();

    // Reaped: no /proc entry at all.
    std::fs::write(out.join("shard-train.lock"), format!("{} {}\n", host.trim(), zombie.id())).unwrap();
    let three = write_config(tmp.path(), &config(&tiny(), Mode::Full, 1, 4, 3), &out, "export = \"none\"\n");
    let resumed = train_with(1, &three, &["--resume", "latest"], &[]);
    assert!(resumed.status.success() && stderr(&resumed).contains("which is gone"), "{}", stderr(&resumed));
}

/// A copy of the tiny fixture's model directory in `dir`, with `edit` applied to its config.json.
fn model_copy(dir: &Path, edit: impl Fn(&str) -> String) -> PathBuf {
    let model = dir.join("model");
    std::fs::create_dir_all(&model).unwrap();
    std::fs::copy(tiny().join("model.safetensors"), model.join("model.safetensors")).unwrap();
    std::fs::write(model.join("config.json"), edit(&std::fs::read_to_string(tiny().join("config.json")).unwrap())).unwrap();
    model
}

/// Errors that every rank meets are reported once, by rank 0, with the file and what is wrong,
/// in a message of bounded length.
#[test]
fn errors_every_rank_meets_are_printed_once_short_and_for_what_they_are() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let once = |cfg: &str, expected: &[&str]| {
        let failed = train_with(2, &write_config(tmp.path(), cfg, &out, "export = \"none\"\n"), &[], &[]);
        let err = stderr(&failed);
        assert!(!failed.status.success(), "{err}");
        assert_eq!(err.matches("error:").count(), 1, "one message: {err}");
        assert!(!err.contains("[rank") && !err.contains("MPI_ABORT") && !err.contains("panicked"), "ended together: {err}");
        assert!(err.len() < 1500, "{} bytes: {err}", err.len());
        for piece in expected {
            assert!(err.contains(piece), "{piece:?} in {err}");
        }
        err
    };
    let cfg = config(&tiny(), Mode::Full, 2, 2, 1);
    let _ = once(&format!("{cfg}[runtime]\nshard_size = 3\n"), &["runtime.shard_size = 3 is more than the job's 2 rank(s)"]);

    // A config of 40 layers for a checkpoint of 2: 342 tensors missing, the first few named.
    let deep = model_copy(tmp.path(), |c| c.replace("\"num_hidden_layers\": 2", "\"num_hidden_layers\": 40"));
    let on_deep = cfg.replace(&format!("path = {:?}", tiny()), &format!("path = {deep:?}"));
    let _ = once(&on_deep, &["does not hold the tensors the model config implies", "missing (342): ", "and 337 more"]);

    // A model index that is not JSON is named as such, not as an unreadable safetensors file.
    std::fs::write(deep.join("model.safetensors.index.json"), "{\"weight_map\": ").unwrap();
    let err = once(&on_deep, &["model.safetensors.index.json is not a valid model.safetensors.index.json (EOF"]);
    assert!(!err.contains("safetensors file"), "{err}");

    // data.path a directory says so.
    let on_dir = cfg.replace(&format!("{:?}", tiny().join("data.jsonl")), &format!("{:?}", tmp.path()));
    let _ = once(&on_dir, &["`data.path` = ", ": a directory, expected a file"]);
}

/// A rank stopped before MPI_Init (where the other ranks wait for it, before the watchdog exists)
/// ends the job within runtime.startup_timeout_s, saying where it waited; before, the job hung.
#[test]
fn a_rank_stopped_before_mpi_init_ends_the_job_within_the_startup_deadline() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let cfg = format!("{}\n[runtime]\nstartup_timeout_s = 5\n", config(&tiny(), Mode::Full, 2, 2, 2));
    let path = write_config(tmp.path(), &cfg, &out, "export = \"none\"\n");
    let started = Instant::now();
    let output = train_with(2, &path, &[], &[("SHARD_TRAIN_TEST_STOP_BEFORE_MPI_INIT", "1")]);
    let waited = started.elapsed();
    let err = stderr(&output);
    assert!(!output.status.success(), "{err}");
    assert!(waited < Duration::from_secs(30), "the job ended {waited:?} after its start (the test's own limit is 120 s)");
    assert!(err.contains("[rank 0] start-up deadline: after 5 s (runtime.startup_timeout_s = 5) MPI_Init has not returned"), "{err}");
}

/// A kill while pruning an old save (here right after its first file is removed) leaves it
/// without its COMPLETE marker, never marked complete without its train state: the resume takes
/// `latest` and removes the half-pruned one. Before, train_state.json (first in ext4's directory
/// order) went first and COMPLETE last.
#[test]
fn a_kill_while_pruning_never_leaves_a_save_marked_complete_without_its_state() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let path = write_config(tmp.path(), &config(&tiny(), Mode::Full, 2, 2, 3), &out, "save_every = 1\nkeep_last = 1\nexport = \"none\"\n");
    let killed = train_with(2, &path, &[], &[("SHARD_TRAIN_TEST_DIE_IN_PRUNE", "1")]);
    assert!(!killed.status.success(), "{}", stderr(&killed));
    wait_for_the_lock_holder(&out);
    let step_1 = out.join("checkpoints/step-0000001");
    assert!(step_1.exists(), "killed while pruning step 1");
    assert!(!step_1.join("COMPLETE").exists() || step_1.join("train_state.json").exists(), "step 1 is marked complete without its state");
    assert_eq!(latest(&out), "step-0000002");

    let resumed = train_with(2, &path, &["--resume", "latest"], &[]);
    assert!(resumed.status.success(), "{}", stderr(&resumed));
    assert!(!step_1.exists(), "the half-pruned save is removed");
    assert_eq!(latest(&out), "step-0000003");
}

/// Merging a LoRA save into its base checks the base's fingerprint as a resume does: a base that
/// changed since training is refused, naming both fingerprints (it was merged into silently).
#[test]
fn an_export_refuses_a_lora_base_changed_since_training() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("base");
    std::fs::create_dir_all(&base).unwrap();
    for file in ["config.json", "model.safetensors"] {
        std::fs::copy(tiny().join(file), base.join(file)).unwrap();
    }
    let cfg = config(&tiny(), Mode::Lora, 2, 2, 2).replace(&format!("path = {:?}", tiny()), &format!("path = {base:?}"));
    let out = tmp.path().join("run");
    assert!(train_with(2, &write_config(tmp.path(), &cfg, &out, "export = \"none\"\n"), &[], &[]).status.success());
    let export = |to: &str| {
        Command::new(env!("CARGO_BIN_EXE_shard-train"))
            .args(["export", "--checkpoint", out.to_str().unwrap(), "--out", tmp.path().join(to).to_str().unwrap()])
            .output()
            .unwrap()
    };
    let merged = export("merged");
    assert!(merged.status.success(), "{}", stderr(&merged));

    corrupt(&base.join("model.safetensors"));
    let refused = export("merged-again");
    let err = stderr(&refused);
    assert!(!refused.status.success() && err.contains("holds other weights") && err.contains("fingerprint"), "{err}");
    assert!(!tmp.path().join("merged-again").exists());
}
