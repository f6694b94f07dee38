//! `shard-train quantize`: the tiny model quantized by the binary equals what transformers +
//! bitsandbytes save (tests/fixtures/tiny-mistral/qlora/nf4), and reads back as NF4.

mod common;

use std::process::Command;

use common::tiny;
use shard_checkpoint::{HfCheckpoint, Nf4Checkpoint};
use shard_model::MistralConfig;

fn quantize(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_shard-train")).arg("quantize").args(args).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

#[test]
fn quantize_writes_what_bitsandbytes_saves() {
    let out = tempfile::tempdir().unwrap();
    let (ok, stdout, stderr) = quantize(&["--model", tiny().to_str().unwrap(), "--out", out.path().to_str().unwrap()]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("quantized 14 linears to NF4, kept 7 tensors"), "{stdout}");
    let ours = HfCheckpoint::open(out.path()).unwrap();
    let theirs = HfCheckpoint::open(&tiny().join("qlora/nf4")).unwrap();
    assert_eq!(ours.names().collect::<Vec<_>>(), theirs.names().collect::<Vec<_>>());
    for name in theirs.names() {
        let numel: usize = theirs.shape(name).unwrap().iter().product();
        let bytes = |c: &HfCheckpoint| match c.dtype(name).unwrap() {
            shard_checkpoint::DiskDtype::U8 => c.read_bytes_range(name, 0, numel).unwrap(),
            _ => c.read_f32(name).unwrap().iter().flat_map(|v| v.to_le_bytes()).collect(),
        };
        assert_eq!((ours.dtype(name), ours.shape(name)), (theirs.dtype(name), theirs.shape(name)), "{name}");
        assert!(bytes(&ours) == bytes(&theirs), "{name} differs from bitsandbytes'");
    }
    let config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.path().join("config.json")).unwrap()).unwrap();
    let model = MistralConfig::from_json(&config, out.path()).unwrap();
    Nf4Checkpoint::open(out.path(), &config, &model).unwrap();
}

#[test]
fn quantize_refuses_bad_input_by_name() {
    let out = tempfile::tempdir().unwrap();
    let out = out.path().to_str().unwrap();
    let (ok, _, stderr) = quantize(&["--model", tiny().join("qlora/nf4").to_str().unwrap(), "--out", out]);
    assert!(!ok && stderr.contains("`quantization_config`: the model is quantized already"), "{stderr}");
    let (ok, _, stderr) = quantize(&["--model", tiny().to_str().unwrap(), "--out", tiny().to_str().unwrap()]);
    assert!(!ok && stderr.contains("is the model directory"), "{stderr}");
    let (ok, _, stderr) = quantize(&["--model", tiny().join("lora").to_str().unwrap(), "--out", out]);
    assert!(!ok && stderr.contains("config.json"), "{stderr}");
}

#[test]
fn training_on_a_quantized_checkpoint_is_refused_by_key() {
    let config = format!(
        "[model]\npath = {:?}\n[data]\npath = {:?}\nseq_len = 24\n[train]\nmode = \"full\"\nsteps = 1\n",
        tiny().join("qlora/nf4"),
        tiny().join("data.jsonl")
    );
    let run = common::train(1, &config, "none", &[]);
    assert!(!run.output.status.success());
    assert!(
        run.stderr().contains("config.json: `quantization_config`: model.path is a quantized (bitsandbytes NF4) checkpoint"),
        "{}",
        run.stderr()
    );
}
