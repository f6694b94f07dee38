//! `shard-train data preview`: the rows as training sees them (text with the no-loss tokens
//! marked, or JSON), the cache reused on the second call, and bad data or settings reported with
//! the file and line or key.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

fn shard_train(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_shard-train")).args(args).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

/// A run config in `dir` for `data` in `format`: the Mistral-7B architecture (not loaded) and
/// tokenizer for the text formats, the tiny checkpoint for `tokenized`.
fn write_config(dir: &Path, format: &str, data: &Path, extra: &str) -> String {
    let (model, tokenizer) = if format == "tokenized" {
        (format!("path = {:?}", tiny()), String::new())
    } else {
        let tokenizer = fixtures().join("tokenizer/mistral-7b-v0.1.tokenizer.json");
        (
            format!("init = \"random\"\nconfig = {:?}", fixtures().join("mistral-7b-v0.1/config.json")),
            format!("tokenizer = {tokenizer:?}\n"),
        )
    };
    let text = format!(
        "[model]\n{model}\n[data]\n{tokenizer}path = {data:?}\nformat = \"{format}\"\nseq_len = 48\n{extra}[output]\ndir = \"out\"\n"
    );
    let path = dir.join("run.toml");
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_owned()
}

fn preview(config: &str, extra: &[&str]) -> (bool, String, String) {
    let mut args = vec!["data", "preview", "--config", config];
    args.extend(extra);
    shard_train(&args)
}

#[test]
fn marks_the_tokens_without_loss() {
    let tmp = tempfile::tempdir().unwrap();
    let config = write_config(tmp.path(), "chat", &fixtures().join("data/chat.jsonl"), "");
    let (ok, stdout, stderr) = preview(&config, &["--n", "2"]);
    assert!(ok, "{stderr}");
    assert!(stdout.starts_with("row 0: 12 tokens, 3 with loss (⟦no loss⟧)\n⟦<s> [INST] Hi [/INST]⟧ Hello!</s>\n"), "{stdout}");
    assert!(stdout.contains("\n⟦1 733 16289 28793 15359 733 28748 16289 28793⟧ 22557 28808 2\n"), "{stdout}");
    assert!(stdout.contains("[/INST]⟧ 4</s>⟦ [INST] And 3+3? [/INST]⟧ 6</s>"), "{stdout}");
    assert!(!stdout.contains("row 2"), "--n 2");
    assert!(stderr.contains("built ") && stderr.contains("4 examples, 122 tokens; 1 truncated to seq_len"), "{stderr}");

    let (ok, _, stderr) = preview(&config, &[]);
    assert!(ok && stderr.contains("reused "), "the second call reuses the cache: {stderr}");
}

/// Whether a reference row (unpacked) predicts something: two tokens or more and a label with
/// loss after the first. Training skips the others as bad examples (`on_bad_example = "skip"`).
fn predicts_something(row: &serde_json::Value) -> bool {
    let labels = row["labels"].as_array().unwrap();
    labels.len() >= 2 && labels[1..].iter().any(|l| l.as_i64() != Some(-100))
}

/// A packed row: its examples set apart by `||`, where each starts (its positions from 0), each
/// example's first token without loss; and how full the rows are.
#[test]
fn marks_the_examples_of_a_packed_row() {
    let tmp = tempfile::tempdir().unwrap();
    let config = write_config(tmp.path(), "tokenized", &fixtures().join("data/tokenized.jsonl"), "packing = true\n");
    let (ok, stdout, stderr) = preview(&config, &["--n", "2"]);
    assert!(ok, "{stderr}");
    let row = "row 1: 18 tokens, 9 with loss (⟦no loss⟧); 4 examples at tokens 0, 5, 12, 16, each attending only to itself, \
               positions from 0 after each ||\n⟦1⟧ 17 18 19 2 || ⟦1 40 41⟧ 42 43 44 2 || ⟦1 7 8 2⟧ || ⟦5⟧ 2\n";
    assert!(stdout.contains(row), "{stdout}");
    assert!(stderr.contains("packing: 5 examples in 2 rows of 48 tokens (2.50 examples a row)"), "{stderr}");
}

/// `--json` prints what training trains on: the reference rows of each format, with and without
/// packing (without, less the rows that predict nothing, which are counted as skipped).
#[test]
fn json_rows_are_the_reference_rows() {
    for format in ["tokenized", "text", "prompt_completion", "chat"] {
        for (packing, suffix) in [("false", "rows"), ("true", "packed")] {
            let tmp = tempfile::tempdir().unwrap();
            let data = fixtures().join(format!("data/{format}.jsonl"));
            let config = write_config(tmp.path(), format, &data, &format!("packing = {packing}\non_bad_example = \"skip\"\n"));
            let (ok, stdout, stderr) = preview(&config, &["--json", "--n", "100"]);
            assert!(ok, "{stderr}");
            let expected = std::fs::read_to_string(fixtures().join(format!("data/expected/{format}.{suffix}.jsonl"))).unwrap();
            let parse = |text: &str| text.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()).collect::<Vec<_>>();
            let mut expected = parse(&expected);
            let all = expected.len();
            if packing == "false" {
                expected.retain(predicts_something);
            }
            assert_eq!(parse(&stdout), expected, "{format} {suffix}");
            let skipped = all - expected.len();
            assert_eq!(skipped > 0, stderr.contains(&format!("bad lines skipped: {skipped}, first: ")), "{format} {suffix}: {stderr}");
        }
    }
}

#[test]
fn bad_lines_name_the_file_and_line_or_are_skipped() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("bad.jsonl");
    std::fs::write(&data, "{\"text\": \"one\"}\n\n{\"text\": \"\"}\n{\"text\": \"two\"}\n").unwrap();
    let config = write_config(tmp.path(), "text", &data, "");
    let (ok, _, stderr) = preview(&config, &[]);
    assert!(!ok);
    assert!(stderr.contains("bad.jsonl:3: empty example: `text` is \"\""), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");

    let config = write_config(tmp.path(), "text", &data, "on_bad_example = \"skip\"\n");
    let (ok, stdout, stderr) = preview(&config, &[]);
    assert!(ok, "{stderr}");
    assert!(stderr.contains("2 examples, 6 tokens; bad lines skipped: 1, first: ") && stderr.contains("bad.jsonl:3: empty"), "{stderr}");
    assert!(stdout.contains("⟦<s>⟧ one</s>") && stdout.contains("⟦<s>⟧ two</s>"), "{stdout}");
}

#[test]
fn tokens_outside_the_model_vocabulary() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("ids.jsonl");
    std::fs::write(&data, "{\"input_ids\": [1, 2]}\n{\"input_ids\": [1, 1000]}\n").unwrap();
    let config = write_config(tmp.path(), "tokenized", &data, "");
    let (ok, _, stderr) = preview(&config, &[]);
    assert!(!ok);
    assert!(stderr.contains("ids.jsonl:2: input_ids[1] = 1000 is outside the vocabulary (0..1000)"), "{stderr}");
}

#[test]
fn text_formats_need_a_tokenizer() {
    let tmp = tempfile::tempdir().unwrap();
    // The tiny checkpoint has no tokenizer.json to default to.
    let text = format!("[model]\npath = {:?}\n[data]\npath = {:?}\nformat = \"text\"\n", tiny(), fixtures().join("data/text.jsonl"));
    std::fs::write(tmp.path().join("run.toml"), text).unwrap();
    let (ok, _, stderr) = preview(tmp.path().join("run.toml").to_str().unwrap(), &[]);
    assert!(!ok);
    assert!(
        stderr.contains("run.toml: `data.tokenizer` is needed for format = \"text\"") && stderr.contains("has no tokenizer.json"),
        "{stderr}"
    );
}

/// `data preview | head`: a reader that goes away ends the preview quietly, with exit status 0.
#[test]
fn a_closed_stdout_ends_quietly() {
    let tmp = tempfile::tempdir().unwrap();
    let config = write_config(tmp.path(), "tokenized", &fixtures().join("data/tokenized.jsonl"), "on_bad_example = \"skip\"\n");
    for extra in [&[][..], &["--json"]] {
        let out = with_closed_stdout(&[&["data", "preview", "--config", &config][..], extra].concat());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success() && !stderr.contains("panicked") && !stderr.contains("error"), "{:?}: {stderr}", out.status);
    }
}

/// A `messages` dataset shows as its chat template renders it, the answers with loss; `--set`
/// changes the config as it does for `train`, and a bad value names its key.
#[test]
fn messages_show_the_rendered_template_and_set_overrides_the_config() {
    let tmp = tempfile::tempdir().unwrap();
    let template = fixtures().join("data/chat_template.jinja");
    let config = write_config(tmp.path(), "messages", &fixtures().join("data/messages.jsonl"), &format!("chat_template = {template:?}\n"));
    let (ok, stdout, stderr) = preview(&config, &["--n", "1"]);
    assert!(ok, "{stderr}");
    assert!(stdout.starts_with("row 0: 23 tokens, 5 with loss"), "{stdout}");
    assert!(stdout.contains("<|user|>\nHi\n<|assistant|>\n⟧Hello!</s>"), "{stdout}");
    assert!(stderr.contains(&format!("chat template: {}", template.display())), "{stderr}");

    let (ok, stdout, stderr) = preview(&config, &["--n", "1", "--set", "data.seq_len=20", "--set", "data.on_bad_example=skip"]);
    assert!(ok, "{stderr}");
    assert!(stdout.starts_with("row 0: 20 tokens, 2 with loss"), "{stdout}");
    let (ok, _, stderr) = preview(&config, &["--set", "data.seq_len=long"]);
    assert!(!ok && stderr.contains("`data.seq_len` = \"long\""), "{stderr}");
}
