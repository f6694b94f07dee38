//! `shard-train generate`: greedy continuations equal transformers' `generate(do_sample=False)`
//! (and peft's with adapters) token for token on both fixtures, the sliding window of
//! tiny-mistral-window (7) shorter than prompt and output; it stops after EOS; a mid-run save
//! generates as its export does; sampling with a seed is reproducible.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::*;

fn generate(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_shard-train")).arg("generate").args(args).output().unwrap()
}

/// The `generated_ids` of each prompt of a `--json` run.
fn generated_ids(args: &[&str]) -> Vec<Vec<u32>> {
    let out = generate(&[args, &["--json"]].concat());
    assert!(out.status.success(), "generate {args:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8(out.stdout).unwrap();
    stdout
        .lines()
        .map(|l| serde_json::from_value(serde_json::from_str::<serde_json::Value>(l).unwrap()["generated_ids"].clone()).unwrap())
        .collect()
}

fn ids_arg(ids: &[u32]) -> String {
    ids.iter().map(u32::to_string).collect::<Vec<_>>().join(",")
}

/// `--prompt-ids` for each prompt, and `--max-new-tokens`.
fn prompt_args(prompts: &[Vec<u32>], max_new: usize) -> Vec<String> {
    let mut args: Vec<String> = prompts.iter().flat_map(|p| ["--prompt-ids".to_owned(), ids_arg(p)]).collect();
    args.extend(["--max-new-tokens".to_owned(), max_new.to_string()]);
    args
}

fn strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

/// generate.json's cases of `kind` (base, lora): prompts and continuations where transformers'
/// own f32 and f64 runs agree (all of them, on these fixtures).
fn reference_cases(dir: &Path, kind: &str) -> (Vec<Vec<u32>>, Vec<Vec<u32>>, usize) {
    let reference: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("generate.json")).unwrap()).unwrap();
    let cases: Vec<&serde_json::Value> = reference["cases"][kind].as_array().unwrap().iter().filter(|c| c["f32_agrees"] == true).collect();
    assert_eq!(cases.len(), 3, "{kind}: every case of {} is decided", dir.display());
    let ids = |c: &serde_json::Value, key: &str| serde_json::from_value::<Vec<u32>>(c[key].clone()).unwrap();
    let prompts = cases.iter().map(|c| ids(c, "prompt_ids")).collect();
    let generated = cases.iter().map(|c| ids(c, "generated_ids")).collect();
    (prompts, generated, reference["max_new_tokens"].as_u64().unwrap() as usize)
}

#[test]
fn greedy_continuations_equal_transformers_and_peft() {
    for dir in [tiny(), fixtures().join("tiny-mistral-window")] {
        for kind in ["base", "lora"] {
            let (prompts, expected, max_new) = reference_cases(&dir, kind);
            let mut args = vec!["--model".to_owned(), dir.display().to_string()];
            if kind == "lora" {
                args.extend(["--adapter".to_owned(), dir.join("lora").display().to_string()]);
            }
            args.extend(prompt_args(&prompts, max_new));
            assert_eq!(generated_ids(&strs(&args)), expected, "{} {kind}", dir.display());
        }
    }
}

/// With an `eos_token_id` that the model produces mid-way, the continuation is the reference's up
/// to and including its first occurrence.
#[test]
fn stops_after_eos() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = fixtures().join("tiny-mistral-window");
    let (prompts, expected, max_new) = reference_cases(&dir, "base");
    let eos = expected[0][5];
    let mut config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    config["eos_token_id"] = eos.into();
    std::fs::write(tmp.path().join("config.json"), config.to_string()).unwrap();
    std::fs::copy(dir.join("model.safetensors"), tmp.path().join("model.safetensors")).unwrap();
    let mut args = vec!["--model".to_owned(), tmp.path().display().to_string()];
    args.extend(prompt_args(&prompts[..1], max_new));
    let first = expected[0].iter().position(|&t| t == eos).unwrap();
    assert_eq!(generated_ids(&strs(&args)), vec![expected[0][..=first].to_vec()]);
}

/// A save taken mid-run generates what its export generates (full fine-tuning: the HF export;
/// LoRA: the base with the exported peft adapters), and not what the untrained model does.
#[test]
fn a_mid_run_save_generates_as_its_export() {
    let (prompts, untrained, _) = reference_cases(&tiny(), "base");
    let prompt = prompt_args(&prompts, 12);
    for mode in [Mode::Full, Mode::Lora] {
        let run = train_with_output(1, &config(&tiny(), mode, 1, 4, 2), "export = \"none\"\nsave_every = 1", &[]);
        run.assert_success();
        let save = run.out_dir.join("checkpoints/step-0000001");
        let from_save = generated_ids(&strs(&[vec!["--checkpoint".to_owned(), save.display().to_string()], prompt.clone()].concat()));
        let export = run.out_dir.parent().unwrap().join("exported");
        let format = if mode == Mode::Full { "hf" } else { "peft" };
        let out = Command::new(env!("CARGO_BIN_EXE_shard-train"))
            .args(["export", "--checkpoint", save.to_str().unwrap(), "--out", export.to_str().unwrap(), "--format", format])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let source = match mode {
            Mode::Full => vec!["--model".to_owned(), export.display().to_string()],
            Mode::Lora => vec!["--model".to_owned(), tiny().display().to_string(), "--adapter".to_owned(), export.display().to_string()],
        };
        assert_eq!(from_save, generated_ids(&strs(&[source, prompt.clone()].concat())), "{mode:?}");
        let untrained: Vec<Vec<u32>> = untrained.iter().map(|ids| ids[..12].to_vec()).collect();
        assert_ne!(from_save, untrained, "{mode:?}: the save's weights, not the fixture's");
    }
}

#[test]
fn seeded_sampling_is_reproducible() {
    let model = tiny().display().to_string();
    let sample = |seed: &str| {
        let mut args = vec!["--model", model.as_str(), "--temperature", "1.5", "--top-k", "50", "--top-p", "0.95", "--seed", seed];
        args.extend(["--prompt-ids", "1,24,53,189", "--prompt-ids", "1", "--max-new-tokens", "16"]);
        generated_ids(&args)
    };
    let first = sample("7");
    assert_eq!(first, sample("7"), "the same seed, the same tokens");
    assert_ne!(first, sample("8"), "another seed, other tokens");
    assert_ne!(first[0], first[1][..first[0].len()], "prompts draw from streams of their own");
}

#[test]
fn text_prompts_need_a_tokenizer_and_bad_ids_are_named() {
    let model = tiny().display().to_string();
    let out = generate(&["--model", &model, "--prompt", "Hello"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("need a tokenizer") && stderr.contains("--tokenizer"), "{stderr}");
    let out = generate(&["--model", &model, "--prompt-ids", "1,1000"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("1000 is outside the model's vocabulary (0..1000)"), "{stderr}");
}

/// --chat renders the prompt with the chat template and its generation prompt: the one given, or
/// the one beside the tokenizer (as an export of a chat-trained run carries it); without one, in
/// Mistral's [INST] format. --prompts reads ShareGPT's conversations too.
#[test]
fn chat_prompts_use_the_chat_template() {
    let model = tiny().display().to_string();
    let tokenizer = fixtures().join("tiny-text/tokenizer.json");
    let template = fixtures().join("data/chat_template.jinja");
    let shown = |args: &[&str]| {
        let base = ["--model", &model, "--chat", "--prompt", "What is the capital of Italy?", "--max-new-tokens", "1"];
        let out = generate(&[&base[..], args].concat());
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let tokenizer_arg = tokenizer.to_str().unwrap();
    let rendered = "<|user|>\nWhat is the capital of Italy?\n<|assistant|>\n";
    let given = shown(&["--tokenizer", tokenizer_arg, "--chat-template", template.to_str().unwrap()]);
    assert!(given.contains(rendered), "{given:?}");
    assert!(shown(&["--tokenizer", tokenizer_arg]).contains("[INST] What is the capital of Italy? [/INST]"));

    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(&tokenizer, tmp.path().join("tokenizer.json")).unwrap();
    let config = serde_json::json!({ "chat_template": std::fs::read_to_string(&template).unwrap() });
    std::fs::write(tmp.path().join("tokenizer_config.json"), config.to_string()).unwrap();
    let beside = tmp.path().join("tokenizer.json");
    assert!(shown(&["--tokenizer", beside.to_str().unwrap()]).contains(rendered));

    let prompts = tmp.path().join("prompts.jsonl");
    std::fs::write(&prompts, r#"{"conversations": [{"from": "human", "value": "What is the capital of Italy?"}]}"#).unwrap();
    let out = generate(&[
        "--model",
        &model,
        "--tokenizer",
        beside.to_str().unwrap(),
        "--prompts",
        prompts.to_str().unwrap(),
        "--max-new-tokens",
        "1",
    ]);
    assert!(String::from_utf8_lossy(&out.stdout).contains(rendered), "{}", String::from_utf8_lossy(&out.stderr));
}
