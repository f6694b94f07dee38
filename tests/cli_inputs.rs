//! The binary's answers to its inputs: `inspect` on the real Mistral-7B config, and one clear
//! error (file, key or tensor, expected vs found), a non-zero exit and no panic for bad input.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

fn shard_train(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_shard-train")).args(args).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

#[test]
fn inspect_reports_mistral_7b_exactly() {
    let dir = fixtures().join("mistral-7b-v0.1");
    let (ok, stdout, _) = shard_train(&["inspect", "--model", dir.to_str().unwrap()]);
    assert!(ok);
    assert!(stdout.contains("7,241,732,096"), "{stdout}");

    let (ok, stdout, _) = shard_train(&["inspect", "--model", dir.to_str().unwrap(), "--json"]);
    assert!(ok);
    let ours: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let reference: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("param_shapes.json")).unwrap()).unwrap();
    assert_eq!(ours["param_count"], 7_241_732_096u64);
    assert_eq!(ours["shapes"], reference["shapes"]);
}

/// A run config for the tiny fixture with `model_dir` as the checkpoint, plus `extra` TOML.
fn write_config(dir: &Path, model_dir: &Path, extra: &str) -> String {
    let text = format!(
        "[model]\npath = {:?}\n[data]\npath = {:?}\nseq_len = 24\n[train]\nsteps = 1\n{extra}",
        model_dir,
        tiny().join("data.jsonl"),
    );
    let path = dir.join("run.toml");
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_owned()
}

/// Runs `train` and checks that it fails with every `expected` piece in its error, and no panic.
fn assert_clean_failure(config: &str, expected: &[&str]) {
    let (ok, _, stderr) = shard_train(&["train", "--config", config]);
    assert!(!ok, "should fail");
    for piece in expected {
        assert!(stderr.contains(piece), "stderr should contain {piece:?}:\n{stderr}");
    }
    assert!(!stderr.contains("panicked") && !stderr.contains("backtrace"), "{stderr}");
}

/// Data settings that cannot work (a tokenizer larger than the model's vocabulary, a chat
/// template that does not compile) stop the run once, before the plan is printed.
#[test]
fn data_setup_errors_come_before_the_plan_and_once() {
    let tmp = tempfile::tempdir().unwrap();
    let bad_template = tmp.path().join("bad.jinja");
    std::fs::write(&bad_template, "{% for m in messages %}{{ m.content }}").unwrap();
    let cases = [
        (
            format!("format = \"text\"\ntokenizer = {:?}", fixtures().join("tokenizer/mistral-7b-v0.1.tokenizer.json")),
            "has 32000 tokens, more than the model's vocab_size (1000)",
        ),
        (
            format!(
                "format = \"messages\"\ntokenizer = {:?}\nchat_template = {bad_template:?}",
                fixtures().join("tiny-text/tokenizer.json")
            ),
            "bad.jinja: syntax error",
        ),
    ];
    for (data, expected) in cases {
        let text = format!(
            "[model]\npath = {:?}\n[data]\npath = {:?}\nseq_len = 24\n{data}\n[train]\nsteps = 1\n[output]\ndir = {:?}\n",
            tiny(),
            fixtures().join("data/messages.jsonl"),
            tmp.path().join("run"),
        );
        let config = tmp.path().join("run.toml");
        std::fs::write(&config, text).unwrap();
        let (ok, stdout, stderr) = shard_train(&["train", "--config", config.to_str().unwrap()]);
        assert!(!ok);
        assert_eq!(stderr.matches(expected).count(), 1, "once: {stderr}");
        assert!(!stdout.contains("f32 master"), "before the plan: {stdout}");
    }
}

#[test]
fn config_with_unknown_key_or_wrong_type() {
    let tmp = tempfile::tempdir().unwrap();
    let config = write_config(tmp.path(), &tiny(), "learning_rate = 0.1\n");
    assert_clean_failure(&config, &["run.toml", "unknown field `learning_rate`", "line 8"]);
    let config = write_config(tmp.path(), &tiny(), "lr = \"fast\"\n");
    assert_clean_failure(&config, &["run.toml", "lr", "invalid type: string \"fast\", expected f64"]);
}

/// `train.optimizer` and `runtime.offload` take their listed values only, named with the key
/// (that `runtime.offload = "optimizer"` trains is tests/offload.rs).
#[test]
fn optimizer_and_offload_values() {
    let tmp = tempfile::tempdir().unwrap();
    let config = write_config(tmp.path(), &tiny(), "optimizer = \"adam8bit\"\n");
    assert_clean_failure(&config, &["run.toml", "optimizer = \"adam8bit\"", "unknown variant `adam8bit`, expected `adamw` or `adamw8bit`"]);
    let config = write_config(tmp.path(), &tiny(), "[runtime]\noffload = \"cpu\"\n");
    assert_clean_failure(&config, &["run.toml", "offload = \"cpu\"", "unknown variant `cpu`, expected `none` or `optimizer`"]);
}

/// Dtypes other than f32 and bf16 are refused at load, with the key and the choices.
#[test]
fn unknown_dtypes() {
    let tmp = tempfile::tempdir().unwrap();
    let config = write_config(tmp.path(), &tiny(), "[runtime]\nreduce_dtype = \"f16\"\n");
    assert_clean_failure(&config, &["run.toml", "reduce_dtype", "unknown variant `f16`, expected `f32` or `bf16`"]);
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replacen("[data]", "dtype = \"fp8\"\n[data]", 1)
        .replace("[runtime]\nreduce_dtype = \"f16\"\n", "");
    std::fs::write(&config, text).unwrap();
    assert_clean_failure(&config, &["run.toml", "dtype", "unknown variant `fp8`, expected `f32` or `bf16`"]);
}

#[test]
fn missing_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let config = write_config(tmp.path(), &tmp.path().join("no-such-model"), "");
    assert_clean_failure(&config, &["`model.path`", "no-such-model", "no such directory"]);

    let empty = tmp.path().join("empty-model");
    std::fs::create_dir(&empty).unwrap();
    std::fs::copy(tiny().join("config.json"), empty.join("config.json")).unwrap();
    let config = write_config(tmp.path(), &empty, "");
    assert_clean_failure(&config, &["empty-model", "neither model.safetensors nor model.safetensors.index.json"]);
}

#[test]
fn truncated_safetensors() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    std::fs::create_dir(&model).unwrap();
    std::fs::copy(tiny().join("config.json"), model.join("config.json")).unwrap();
    let bytes = std::fs::read(tiny().join("model.safetensors")).unwrap();
    std::fs::write(model.join("model.safetensors"), &bytes[..bytes.len() / 2]).unwrap();
    let config = write_config(tmp.path(), &model, "");
    assert_clean_failure(&config, &["model.safetensors", "truncated"]);
}

#[test]
fn tensor_of_the_wrong_shape() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    std::fs::create_dir(&model).unwrap();
    // The same checkpoint under a config with a wider MLP: every gate/up/down projection mismatches.
    let config_json =
        std::fs::read_to_string(tiny().join("config.json")).unwrap().replace("\"intermediate_size\": 160", "\"intermediate_size\": 128");
    std::fs::write(model.join("config.json"), config_json).unwrap();
    std::fs::copy(tiny().join("model.safetensors"), model.join("model.safetensors")).unwrap();
    let config = write_config(tmp.path(), &model, "");
    assert_clean_failure(&config, &["wrong shape (6)", "model.layers.0.mlp.gate_proj.weight: expected [128, 64], found [160, 64]"]);
}

#[test]
fn unsupported_model_config_key() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    std::fs::create_dir(&model).unwrap();
    let config_json = std::fs::read_to_string(tiny().join("config.json"))
        .unwrap()
        .replace("\"tie_word_embeddings\": false", "\"tie_word_embeddings\": true");
    std::fs::write(model.join("config.json"), config_json).unwrap();
    let config = write_config(tmp.path(), &model, "");
    assert_clean_failure(&config, &["config.json", "`tie_word_embeddings`"]);
}

/// On a machine without the CUDA driver (this one), a cuda run of the default build stops after
/// the plan, before anything is loaded, with one line: how to build with CUDA. (The other missing pieces are
/// unit-tested in crates/train/src/system/cuda_check.rs.)
#[cfg(not(feature = "cuda"))]
#[test]
fn cuda_run_without_a_cuda_build_says_how_to_build() {
    let tmp = tempfile::tempdir().unwrap();
    let config = write_config(tmp.path(), &tiny(), "[runtime]\ndevice = \"cuda\"\n");
    let (ok, stdout, stderr) = shard_train(&["train", "--config", &config]);
    assert!(!ok, "should fail");
    assert!(
        stderr.contains("cannot run runtime.device = \"cuda\"") && stderr.contains("cargo build --release --features cuda"),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 2, "one line of error, one missing piece:\n{stderr}");
    assert!(!stdout.contains("step 1"), "no training starts:\n{stdout}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// A wgpu run of a build without the `wgpu` feature stops after the plan with one line: how to
/// build it.
#[cfg(not(feature = "wgpu"))]
#[test]
fn wgpu_run_without_a_wgpu_build_says_how_to_build() {
    let tmp = tempfile::tempdir().unwrap();
    let config = write_config(tmp.path(), &tiny(), "[runtime]\ndevice = \"wgpu\"\n");
    let (ok, stdout, stderr) = shard_train(&["train", "--config", &config]);
    assert!(!ok, "should fail");
    assert!(
        stderr.contains("cannot run runtime.device = \"wgpu\"") && stderr.contains("cargo build --release --features wgpu"),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 2, "one line of error, one missing piece:\n{stderr}");
    assert!(!stdout.contains("step 1"), "no training starts:\n{stdout}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// On a machine without the CUDA driver (this one), a cuda run of the cuda build stops after the
/// plan, before anything is loaded, the driver named with its fix among the pieces this machine lacks. (Skipped
/// where a driver loads: the GPU path is then what tests/gpu/check.sh checks.)
#[cfg(feature = "cuda")]
#[test]
fn cuda_run_without_a_driver_names_libcuda() {
    if shard_train_core::system::cuda_check::library_loads("libcuda.so.1") {
        eprintln!("skipped: this machine has a CUDA driver");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let config = write_config(tmp.path(), &tiny(), "[runtime]\ndevice = \"cuda\"\n");
    let (ok, stdout, stderr) = shard_train(&["train", "--config", &config]);
    assert!(!ok, "should fail");
    assert!(stderr.contains("cannot run runtime.device = \"cuda\""), "{stderr}");
    assert!(stderr.contains("(libcuda.so) cannot be loaded") && stderr.contains("LD_LIBRARY_PATH"), "{stderr}");
    assert!(!stderr.contains("--features cuda"), "this build has CUDA:\n{stderr}");
    assert!(!stdout.contains("step 1"), "no training starts:\n{stdout}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// Values are checked as the f32 they are used in: lr = 1e39 is finite as f64 only. And an update
/// that overflows f32 (lr = 1e38 is finite, but lr / (1 - beta1) at step 1 is not) leaves inf
/// weights, which are never saved or exported.
#[test]
fn values_that_overflow_f32_are_refused_and_non_finite_weights_never_saved() {
    let tmp = tempfile::tempdir().unwrap();
    let config = write_config(tmp.path(), &tiny(), "lr = 1e39\n");
    assert_clean_failure(&config, &["run.toml", "`train.lr`", "finite as f32", "1e39"]);

    let config = write_config(tmp.path(), &tiny(), "lr = 1e38\n");
    assert_clean_failure(&config, &["after step 1", "hold inf or NaN", "`model.embed_tokens.weight`", "the save was not written"]);
    let out = tmp.path().join("runs/default");
    assert!(!out.join("checkpoints/latest").exists() && !out.join("final").exists(), "nothing saved or exported");
}

/// `output.dir = ""` would resolve to the config's own directory: refused, naming the key.
#[test]
fn an_empty_path_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let config = write_config(tmp.path(), &tiny(), "[output]\ndir = \"\"\n");
    assert_clean_failure(&config, &["run.toml", "`output.dir` = \"\": expected a path"]);
    assert!(!tmp.path().join("checkpoints").exists() && !tmp.path().join("metrics.jsonl").exists());
}

/// Examples that predict nothing (one token; no label with loss) are bad examples: refused with
/// the file and line, or skipped and counted with `on_bad_example = "skip"`. Data whose every label
/// is -100 is an error either way, never a run of loss 0 that exports the base.
#[test]
fn examples_that_predict_nothing_are_refused_or_skipped() {
    let tmp = tempfile::tempdir().unwrap();
    let good = std::fs::read_to_string(tiny().join("data.jsonl")).unwrap();
    let data = tmp.path().join("short.jsonl");
    std::fs::write(&data, format!("{}{{\"input_ids\": [1]}}\n", good.lines().next().unwrap().to_owned() + "\n")).unwrap();
    let with_data = |data: &Path, extra: &str| {
        let text = format!(
            "[model]\npath = {:?}\n[data]\npath = {data:?}\nseq_len = 24\n{extra}[train]\nsteps = 1\nmicro_batch_size = 1\n[output]\nexport = \"none\"\n",
            tiny()
        );
        let path = tmp.path().join("run.toml");
        std::fs::write(&path, text).unwrap();
        std::fs::remove_dir_all(tmp.path().join("runs")).ok();
        path.to_str().unwrap().to_owned()
    };
    let config = with_data(&data, "");
    assert_clean_failure(&config, &["short.jsonl:2: too short to predict anything: 1 token"]);
    let (ok, stdout, stderr) = shard_train(&["train", "--config", &with_data(&data, "on_bad_example = \"skip\"\n")]);
    assert!(ok && stdout.contains("bad lines skipped: 1, first: ") && stdout.contains("short.jsonl:2: too short"), "{stdout}{stderr}");

    let masked = tmp.path().join("masked.jsonl");
    let all_masked: String = good.lines().map(|line| masked_labels(line) + "\n").collect();
    std::fs::write(&masked, all_masked).unwrap();
    assert_clean_failure(&with_data(&masked, ""), &["masked.jsonl:1: no label with loss"]);
    assert_clean_failure(&with_data(&masked, "on_bad_example = \"skip\"\n"), &["masked.jsonl holds no examples (", "bad lines skipped"]);
    assert_clean_failure(&with_data(&masked, "packing = true\n"), &["masked.jsonl: no token carries loss (every label is -100)"]);
    assert!(!tmp.path().join("runs/default/checkpoints/latest").exists(), "nothing trained");
}

/// A tokenized line with every label set to -100.
fn masked_labels(line: &str) -> String {
    let mut row: serde_json::Value = serde_json::from_str(line).unwrap();
    let n = row["input_ids"].as_array().unwrap().len();
    row["labels"] = serde_json::json!(vec![-100; n]);
    row.to_string()
}
