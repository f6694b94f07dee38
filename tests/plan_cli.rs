//! `shard-train plan` as users call it: the built-in Mistral-7B question, and clear errors for
//! bad flags and configs; `train` stops before loading weights when the plan does not fit.

mod common;

use std::process::Command;

use common::*;

fn shard_train(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_shard-train")).args(args).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

fn mistral_7b() -> String {
    fixtures().join("mistral-7b-v0.1").to_str().unwrap().to_owned()
}

/// The README's question: Mistral-7B, 10,000 examples of 1,024 tokens, micro-batch 1, A100 80GB.
#[test]
fn mistral_7b_compare_on_a100_80gb() {
    let model = mistral_7b();
    let args =
        ["plan", "--model", &model, "--gpu", "a100-80gb", "--examples", "10000", "--seq-len", "1024", "--micro-batch", "1", "--compare"];
    let (ok, table, stderr) = shard_train(&args);
    assert!(ok, "{stderr}");
    for label in [
        "full FT, 1 GPU",
        "ZeRO-3 full FT, 2 GPUs",
        "ZeRO-3 full FT, 4 GPUs",
        "ZeRO-3 full FT, 8 GPUs",
        "LoRA r=16, 1 GPU",
        "QLoRA r=16, 1 GPU",
    ] {
        assert!(table.contains(label), "{label} missing:\n{table}");
    }

    let (ok, json, _) = shard_train(&[&args[..], &["--json"]].concat());
    assert!(ok);
    let value: serde_json::Value = serde_json::from_str(&json).unwrap();
    let strategies = value["strategies"].as_array().unwrap();
    let find = |id: &str, gpus: u64| {
        strategies.iter().find(|s| s["strategy"] == id && s["gpus"] == gpus).unwrap_or_else(|| panic!("{id} on {gpus}"))
    };
    assert_eq!(find("full", 1)["fits"], false, "full fine-tuning of 7B on one 80 GB GPU cannot fit");
    let mut previous = u64::MAX;
    for gpus in [2, 4, 8] {
        let s = find("zero3-full", gpus);
        assert_eq!(s["fits"], true, "ZeRO-3 on {gpus}");
        let total = s["per_rank_bytes"]["total"].as_u64().unwrap();
        assert!(total < previous, "per-GPU total falls with more GPUs");
        previous = total;
    }
    assert_eq!(find("lora", 1)["fits"], true);
    assert_eq!(find("qlora", 1)["fits"], true);
    for s in strategies {
        for key in ["compute_shards", "master", "optimizer", "grads", "gathered", "activations", "logits", "buffers", "overhead", "total"] {
            assert!(s["per_rank_bytes"][key].is_u64(), "{key} in {s}");
        }
        assert!(s["tokens_per_s"].as_f64().unwrap() > 0.0 && s["hours"].as_f64().unwrap() > 0.0);
        assert!(s["cost"].is_null(), "no price given, no cost");
    }
}

/// Mistral-7B at its 32k context on H100s: with the fused attention (the default) the plan's
/// activations grow with the sequence, not its square (no [b, heads, s, s] scores), and ZeRO-3
/// on 4 GPUs fits; `--attention eager` plans the scores (128 GiB in f32 at 32k for one layer).
#[test]
fn mistral_7b_at_32k_tokens_with_the_fused_attention() {
    let model = mistral_7b();
    let plan = |seq: &str, attention: &str| {
        let args = ["plan", "--model", &model, "--gpu", "h100-80gb", "--seq-len", seq, "--compare", "--json", "--attention", attention];
        let (ok, json, stderr) = shard_train(&args);
        assert!(ok, "{stderr}");
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(value["assumptions"]["fused_attention"], attention == "fused");
        value["strategies"].as_array().unwrap().iter().find(|s| s["strategy"] == "zero3-full" && s["gpus"] == 4).unwrap().clone()
    };
    let activations = |s: &serde_json::Value| s["per_rank_bytes"]["activations"].as_u64().unwrap() as f64;
    let (fused_16k, fused_32k) = (plan("16384", "fused"), plan("32768", "fused"));
    let (eager_16k, eager_32k) = (plan("16384", "eager"), plan("32768", "eager"));
    assert!(activations(&fused_32k) / activations(&fused_16k) < 2.01, "fused: {} -> {}", activations(&fused_16k), activations(&fused_32k));
    assert!(activations(&eager_32k) / activations(&eager_16k) > 3.5, "eager: {} -> {}", activations(&eager_16k), activations(&eager_32k));
    assert_eq!((fused_32k["fits"].as_bool(), eager_32k["fits"].as_bool()), (Some(true), Some(false)));
    let (ok, table, stderr) = shard_train(&["plan", "--model", &model, "--seq-len", "32768", "--gpu", "h100-80gb", "--compare"]);
    assert!(ok && table.contains("ZeRO-3 full FT, 4 GPUs"), "{stderr}{table}");
}

/// Fenced blocks of a Markdown text: each block's info string (`sh`, `text`) and its lines.
fn fenced_blocks(markdown: &str) -> Vec<(String, Vec<&str>)> {
    let mut blocks = Vec::new();
    let mut open: Option<(String, Vec<&str>)> = None;
    for line in markdown.lines() {
        let fence = line.trim_start().strip_prefix("```");
        match (&mut open, fence) {
            (None, Some(info)) => open = Some((info.trim().to_owned(), Vec::new())),
            (Some(_), Some(_)) => blocks.push(open.take().unwrap()),
            (Some((_, lines)), None) => lines.push(line),
            (None, None) => {}
        }
    }
    blocks
}

/// Every `shard-train plan` command of README.md and docs/*.md shown with its output: a `sh` block
/// of that one command (continued with `\`) followed by the `text` block of what it prints.
fn documented_plans() -> Vec<(String, Vec<String>, String)> {
    let root = repo();
    let mut files = vec![root.join("README.md")];
    let mut docs: Vec<_> = std::fs::read_dir(root.join("docs")).unwrap().map(|e| e.unwrap().path()).collect();
    docs.sort();
    files.extend(docs.into_iter().filter(|p| p.extension().is_some_and(|e| e == "md")));
    let mut plans = Vec::new();
    for file in files {
        let markdown = std::fs::read_to_string(&file).unwrap();
        let blocks = fenced_blocks(&markdown);
        for pair in blocks.windows(2) {
            let [(command_info, command), (output_info, output)] = pair else { unreachable!() };
            let command = command.join("\n").replace("\\\n", " ");
            let Some(args) = command.trim().strip_prefix("target/release/shard-train plan ") else { continue };
            if command_info != "sh" || output_info != "text" {
                continue;
            }
            let place =
                format!("{}: `{}`", file.strip_prefix(&root).unwrap().display(), command.split_whitespace().collect::<Vec<_>>().join(" "));
            assert!(!args.contains(['#', '\'', '"', '\n']), "{place}: one plain command, please (no quotes, comments or lines)");
            let args = std::iter::once("plan").chain(args.split_whitespace()).map(str::to_owned).collect();
            plans.push((place, args, output.join("\n")));
        }
    }
    plans
}

fn repo() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

/// The plan tables of the README and docs/ are what the binary prints, figure for figure, so
/// that they cannot go stale: a change in the planner's figures fails here until the text shown
/// is the new output.
#[test]
fn documented_plan_tables_are_the_binarys_output() {
    let plans = documented_plans();
    for (place, args, shown) in &plans {
        let out = Command::new(env!("CARGO_BIN_EXE_shard-train")).args(args).current_dir(repo()).output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{place}: {}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(stdout.trim_end(), shown.trim_end(), "{place} prints other figures than the text shown");
    }
    for flag in ["--compare", "--fit"] {
        assert!(plans.iter().any(|(_, args, _)| args.iter().any(|a| a == flag)), "no documented plan with {flag}: {plans:?}");
    }
}

/// --fit: full fine-tuning of 7B fits no single 80 GB or 40 GB GPU as asked; with AdamW8bit it
/// fits one 80 GB GPU, with the optimizer offloaded one 40 GB GPU.
/// The plan's first line names the model's size, where it runs and the mode once, with peft's
/// count of trainable parameters for adapters.
#[test]
fn the_header_names_the_mode_once_with_the_trainable_parameters() {
    let model = mistral_7b();
    let (ok, qlora, stderr) = shard_train(&["plan", "--model", &model, "--mode", "qlora", "--gpu", "h100-80gb"]);
    assert!(ok, "{stderr}");
    let header = qlora.lines().next().unwrap();
    assert_eq!(
        header,
        "7,241,732,096 parameters, 32 layers, on 1 h100-80gb (1 node): QLoRA r=16 on q_proj,k_proj,v_proj,o_proj (NF4 base); \
         13,631,488 trainable parameters"
    );
    let (ok, cpu, stderr) = shard_train(&["plan", "--model", &model, "--device", "cpu", "--gpus", "1"]);
    assert!(ok, "{stderr}");
    assert!(cpu.starts_with("7,241,732,096 parameters, 32 layers, on 1 CPU rank (1 node): full fine-tuning\n"), "{cpu}");
}

#[test]
fn fit_finds_the_fewest_gpus() {
    let model = mistral_7b();
    for (gpu, strategy) in [("a100-80gb", "full-adamw8bit"), ("a100-40gb", "full-offload")] {
        let (ok, json, stderr) = shard_train(&["plan", "--model", &model, "--gpu", gpu, "--fit", "--json"]);
        assert!(ok, "{stderr}");
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        let plan = &value["strategies"][0];
        assert_eq!((plan["gpus"].as_u64(), plan["strategy"].as_str()), (Some(1), Some(strategy)), "{gpu}");
        assert_eq!(plan["fits"], true);
        assert!(plan["micro_batch"].as_u64().unwrap() >= 1);
    }
}

/// configs/full_ft_1gpu.toml (AdamW8bit and offload) plans to fit one A100 80GB; the same
/// config without the two levers does not.
#[test]
fn full_ft_1gpu_config_fits_one_a100_80gb_only_with_both_levers() {
    let root = repo();
    let config = root.join("configs/full_ft_1gpu.toml");
    let plan_of = |path: &std::path::Path| {
        let (ok, json, stderr) = shard_train(&["plan", "--config", path.to_str().unwrap(), "--json"]);
        assert!(ok, "{stderr}");
        serde_json::from_str::<serde_json::Value>(&json).unwrap()["strategies"][0].clone()
    };
    let with = plan_of(&config);
    assert_eq!((with["gpus"].as_u64(), with["fits"].as_bool()), (Some(1), Some(true)), "{with}");
    assert_eq!(with["strategy"], "full-adamw8bit-offload");
    let text = std::fs::read_to_string(&config).unwrap();
    let plain = text.replace("optimizer = \"adamw8bit\"\n", "").replace("offload = \"optimizer\"\n", "");
    assert!(!plain.contains("adamw8bit") || !plain.contains("offload = "), "{plain}");
    let tmp = tempfile::tempdir().unwrap();
    let plain = plain.replace("\"../models/", &format!("\"{}/models/", root.display())).replace("\"../", &format!("\"{}/", root.display()));
    std::fs::write(tmp.path().join("plain.toml"), plain).unwrap();
    let without = plan_of(&tmp.path().join("plain.toml"));
    assert_eq!((without["strategy"].as_str(), without["fits"].as_bool()), (Some("full"), Some(false)), "{without}");
}

/// `plan --set` changes the run config as `train --set` does: full_ft_1gpu.toml without its
/// two levers no longer fits; a bad value names its key; --set needs a run config.
#[test]
fn set_overrides_the_planned_config() {
    let config = repo().join("configs/full_ft_1gpu.toml");
    let config = config.to_str().unwrap();
    let (ok, json, stderr) =
        shard_train(&["plan", "--config", config, "--json", "--set", "train.optimizer=adamw", "--set", "runtime.offload=none"]);
    assert!(ok, "{stderr}");
    let plan = serde_json::from_str::<serde_json::Value>(&json).unwrap()["strategies"][0].clone();
    assert_eq!((plan["strategy"].as_str(), plan["fits"].as_bool()), (Some("full"), Some(false)), "{plan}");
    let (ok, _, stderr) = shard_train(&["plan", "--config", config, "--set", "train.lr=fast"]);
    assert!(!ok && stderr.contains("`train.lr` = \"fast\""), "{stderr}");
    let (ok, _, stderr) = shard_train(&["plan", "--model", &mistral_7b(), "--set", "train.lr=1"]);
    assert!(!ok && stderr.contains("--set changes a run config's key: it needs --config"), "{stderr}");
}

#[test]
fn bad_flags_say_which_and_why() {
    let model = mistral_7b();
    let cases: [(&[&str], &[&str]); 7] = [
        (&["--micro-batch", "0"], &["--micro-batch", "expected a whole number >= 1"]),
        (&["--gpu", "v100"], &["--gpu", "unknown GPU", "a100-80gb"]),
        (&["--gpu-memory", "80 gigs"], &["--gpu-memory", "\"80 gigs\" is not a size"]),
        (&["--lora-targets", "q_proj,qkv"], &["--lora-targets", "not a projection"]),
        (&["--margin", "150%"], &["--margin", "a fraction in [0, 1]"]),
        (&["--device", "cpu", "--gpu", "h100-80gb"], &["--gpu h100-80gb is a GPU", "--device cpu"]),
        (&["--seq-len", "1"], &["--seq-len"]),
    ];
    for (flags, expected) in cases {
        let (ok, _, stderr) = shard_train(&[&["plan", "--model", &model][..], flags].concat());
        assert!(!ok, "{flags:?} should fail");
        for piece in expected {
            assert!(stderr.contains(piece), "{flags:?}: stderr lacks {piece:?}:\n{stderr}");
        }
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

#[test]
fn configs_the_plan_cannot_read_say_which_and_why() {
    let tmp = tempfile::tempdir().unwrap();
    let tied = tmp.path().join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("mistral-7b-v0.1/config.json")).unwrap()).unwrap();
    config["tie_word_embeddings"] = true.into();
    std::fs::write(&tied, config.to_string()).unwrap();
    let (ok, _, stderr) = shard_train(&["plan", "--model", tied.to_str().unwrap()]);
    assert!(!ok && stderr.contains("`tie_word_embeddings`") && stderr.contains("--model"), "{stderr}");

    let (ok, _, stderr) = shard_train(&["plan", "--micro-batch", "2"]);
    assert!(!ok && stderr.contains("give --model DIR|config.json"), "{stderr}");

    let run = tmp.path().join("run.toml");
    let text = format!(
        "[model]\npath = {:?}\n[data]\npath = {:?}\n[runtime]\ndevice = \"cuda\"\ngpu = \"a100-80gb\"\ngpu_memory = \"lots\"\n",
        tiny(),
        tiny().join("data.jsonl")
    );
    std::fs::write(&run, text).unwrap();
    let (ok, _, stderr) = shard_train(&["plan", "--config", run.to_str().unwrap()]);
    assert!(!ok && stderr.contains("run.toml") && stderr.contains("`runtime.gpu_memory`"), "{stderr}");
}

/// A run that cannot fit the GPU memory it is given stops before any weights are loaded; with
/// --force it goes on (here to the missing cuda backend of a CPU-only build).
#[test]
fn train_stops_before_loading_when_the_plan_does_not_fit() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run.toml");
    let text = format!(
        "[model]\npath = {:?}\n[data]\npath = {:?}\nseq_len = 24\n[train]\nsteps = 1\n[output]\ndir = {:?}\n\
         [runtime]\ndevice = \"cuda\"\ngpu_memory = \"1MB\"\n",
        tiny(),
        tiny().join("data.jsonl"),
        tmp.path().join("out"),
    );
    std::fs::write(&run, text).unwrap();
    let (ok, stdout, stderr) = shard_train(&["train", "--config", run.to_str().unwrap()]);
    assert!(!ok);
    assert!(stdout.contains("memory per rank"), "rank 0 prints the plan:\n{stdout}");
    assert!(stderr.contains("the plan needs") && stderr.contains("--force"), "{stderr}");
    assert!(!tmp.path().join("out/metrics.jsonl").exists());

    let (ok, _, stderr) = shard_train(&["train", "--config", run.to_str().unwrap(), "--force"]);
    assert!(!ok && !stderr.contains("the plan needs"), "{stderr}");
}

/// `plan | head -1`: a reader that goes away ends the command quietly, with exit status 0.
#[test]
fn a_closed_stdout_ends_quietly() {
    let model = mistral_7b();
    let pipeline = format!("'{}' plan --model '{model}' --compare | head -1", env!("CARGO_BIN_EXE_shard-train"));
    let out = Command::new("bash").args(["-o", "pipefail", "-c", &pipeline]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.is_empty(), "{:?}: {stderr}", out.status);
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 1);

    for args in [&["plan", "--model", &model][..], &["plan", "--model", &model, "--json"], &["inspect", "--model", &model]] {
        let out = with_closed_stdout(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success() && stderr.is_empty(), "{args:?}: {:?}: {stderr}", out.status);
    }
}

/// A GPU plan times compute at the peak of its dtype (A100: 312 TFLOP/s in bf16, 19.5 in f32),
/// says which, and a plan that does not fit points to `--fit` and `--compare`.
#[test]
fn plans_use_the_peak_of_their_dtype_and_point_to_fit() {
    let model = mistral_7b();
    let compute_seconds = |dtype: &str| {
        let (ok, json, stderr) = shard_train(&["plan", "--model", &model, "--gpu", "a100-80gb", "--dtype", dtype, "--json"]);
        assert!(ok, "{stderr}");
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        value["strategies"][0]["compute_seconds"].as_f64().unwrap()
    };
    let ratio = compute_seconds("f32") / compute_seconds("bf16");
    assert!((ratio - 312.0 / 19.5).abs() < 1e-6, "f32 / bf16 compute time {ratio}");

    let (ok, table, stderr) = shard_train(&["plan", "--model", &model, "--gpu", "a100-80gb", "--dtype", "f32"]);
    assert!(ok, "{stderr}");
    assert!(table.contains("19.500 TFLOP/s (f32; TF32 tensor cores would give 156 TFLOP/s)"), "{table}");
    assert!(table.contains("gathers in f32") && !table.contains("bf16"), "{table}");
    assert!(table.contains("does NOT fit") && table.contains("--fit") && table.contains("--compare"), "{table}");
    let (_, bf16, _) = shard_train(&["plan", "--model", &model, "--gpu", "a100-80gb"]);
    assert!(bf16.contains("312 TFLOP/s (bf16 tensor cores)") && bf16.contains("gathers in bf16"), "{bf16}");
}
