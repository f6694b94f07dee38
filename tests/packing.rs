//! Packing (`data.packing = true`) trains exactly what the same documents trained unpacked train:
//! against transformers trained on each document in its own row (tools/make_packing_reference.py,
//! `packing/` in the fixtures), for documents of varied length, some with masked prompts, longer
//! than the sliding window (7) of tiny-mistral-window. One step is all seven documents: one packed
//! row (seq_len 98), or two (seq_len 50: 50 and 48 tokens) in one micro-batch or on two ranks.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use shard_checkpoint::HfCheckpoint;

fn window() -> PathBuf {
    fixtures().join("tiny-mistral-window")
}

/// The reference of `mode` (full, lora, qlora) in `dir`/packing.
struct Reference {
    meta: serde_json::Value,
    tensors: HfCheckpoint,
    /// The values the training started from.
    initial: HfCheckpoint,
}

impl Reference {
    fn open(dir: &Path, mode: &str) -> Self {
        let meta = serde_json::from_str(&std::fs::read_to_string(dir.join(format!("packing/{mode}.json"))).unwrap()).unwrap();
        let tensors = HfCheckpoint::open_file(&dir.join(format!("packing/{mode}.safetensors"))).unwrap();
        Self { meta, tensors, initial: initial_params(dir, if mode == "full" { Mode::Full } else { Mode::Lora }) }
    }

    fn f64(&self, key: &str) -> f64 {
        self.meta[key].as_f64().unwrap()
    }
}

/// A packed run of `dir`'s documents as the reference trains them.
fn packed_config(dir: &Path, mode: &str, seq_len: usize, micro_batch: usize, reference: &Reference) -> String {
    let opt = &reference.meta["optimizer"];
    let lora = if mode == "full" { String::new() } else { lora_section(dir, &reference_json(dir)["lora"]) };
    format!(
        "[model]\npath = {dir:?}\n[data]\npath = {data:?}\nseq_len = {seq_len}\nshuffle = false\npacking = true\n\
         [train]\nmode = \"{mode}\"\nsteps = {steps}\nmicro_batch_size = {micro_batch}\ngrad_accum = 1\nlr = {lr}\n\
         weight_decay = {wd}\nbetas = [{b1}, {b2}]\neps = {eps}\nmax_grad_norm = {clip}\n{lora}",
        data = dir.join("packing/docs.jsonl"),
        steps = reference.meta["steps"],
        lr = opt["lr"],
        wd = opt["weight_decay"],
        b1 = opt["betas"][0],
        b2 = opt["betas"][1],
        eps = opt["eps"],
        clip = reference.meta["max_grad_norm"],
    )
}

/// The trained tensors by the reference's names: HF names (full) or peft's keys.
fn trained(run: &Run) -> Vec<(String, Vec<f32>)> {
    let exported = run.export();
    exported.names().map(|n| (n.to_owned(), exported.read_f32(n).unwrap())).collect()
}

/// Losses within 1e-5 of the f64 answer; every tensor as near to it as torch's own f32 training
/// is, within a factor of 3 (and 1e-6 for the tensors torch lands nearer than that), on the
/// elements where Adam is well-conditioned; the others (a clipped gradient below 10x eps at some
/// step, see tools/make_exact64.py) at least halfway from their initial values to their answers
/// (`assert_ill_conditioned_moved`).
fn assert_matches_f64_answer(reference: &Reference, run: &Run) {
    run.assert_success();
    for (i, m) in run.metrics_of_steps(reference.f64("steps") as u64).iter().enumerate() {
        let (loss, expected) = (m["loss"].as_f64().unwrap(), reference.meta["losses_f64"][i].as_f64().unwrap());
        assert!((loss - expected).abs() < 1e-5, "step {}: loss {loss} vs {expected} (f64)", i + 1);
    }
    let ill = &reference.meta["ill_conditioned"]["elements"];
    let trained = trained(run);
    assert_eq!(trained.len(), reference.meta["torch_f32_from_f64"].as_object().unwrap().len());
    for (name, ours) in trained {
        let exact = reference.tensors.read_f32(&format!("exact64.{name}")).unwrap();
        let mut is_ill = vec![false; exact.len()];
        ill[&name].as_array().into_iter().flatten().for_each(|i| is_ill[i.as_u64().unwrap() as usize] = true);
        let split = |values: &[f32], ill: bool| values.iter().zip(&is_ill).filter(|(_, i)| **i == ill).map(|(v, _)| *v).collect::<Vec<_>>();
        let torch = reference.meta["torch_f32_from_f64"][&name]["norm_rel"].as_f64().unwrap();
        let tolerance = 3.0 * torch.max(1e-6);
        let norm_err = norm_rel(&split(&ours, false), &split(&exact, false));
        assert!(norm_err <= tolerance, "{name}: {norm_err:e} from the f64 answer, torch f32 {torch:e}");
        assert_ill_conditioned_moved(&name, &ours, &exact, &reference.initial.read_f32(&name).unwrap(), &is_ill);
    }
}

#[test]
fn packed_full_fine_tuning_equals_each_document_trained_alone() {
    let reference = Reference::open(&window(), "full");
    for (world, seq_len, micro_batch) in [(1, 98, 1), (1, 50, 2), (2, 50, 1)] {
        let run = train(world, &packed_config(&window(), "full", seq_len, micro_batch, &reference), "hf", &[]);
        assert_matches_f64_answer(&reference, &run);
    }
}

/// Unpacked, the seven documents (closed by EOS here in the file) of 7 to 19 tokens in one
/// micro-batch are laid out as one row of 98 tokens instead of seven padded to 19 (fewer
/// multiply-adds): the same training.
#[test]
fn a_padding_free_unpacked_micro_batch_equals_each_document_trained_alone() {
    let reference = Reference::open(&window(), "full");
    let tmp = tempfile::tempdir().unwrap();
    let closed = tmp.path().join("closed.jsonl");
    let docs = std::fs::read_to_string(window().join("packing/docs.jsonl")).unwrap();
    let lines = docs.lines().map(|line| {
        let mut doc: serde_json::Value = serde_json::from_str(line).unwrap();
        let ends_with_loss = doc["labels"].as_array().unwrap().last().unwrap() != -100;
        doc["input_ids"].as_array_mut().unwrap().push(2.into());
        doc["labels"].as_array_mut().unwrap().push(if ends_with_loss { 2 } else { -100 }.into());
        doc.to_string() + "\n"
    });
    std::fs::write(&closed, lines.collect::<String>()).unwrap();
    let config = packed_config(&window(), "full", 98, 7, &reference)
        .replace("packing = true", "packing = false")
        .replace(&format!("{:?}", window().join("packing/docs.jsonl")), &format!("{closed:?}"));
    assert!(config.contains("closed.jsonl") && config.contains("packing = false"), "{config}");
    assert_matches_f64_answer(&reference, &train(1, &config, "hf", &[]));
}

#[test]
fn packed_lora_and_qlora_equal_each_document_trained_alone() {
    for mode in ["lora", "qlora"] {
        let reference = Reference::open(&tiny(), mode);
        for (world, seq_len, micro_batch) in [(1, 98, 1), (2, 50, 1)] {
            let run = train(world, &packed_config(&tiny(), mode, seq_len, micro_batch, &reference), "peft", &[]);
            assert_matches_f64_answer(&reference, &run);
        }
    }
}

/// bf16 mixed precision against torch's (f32 master, bf16 compute, each document in its own row)
/// within tests/mixed_precision.rs's bounds: 3x torch's own spread when the documents are split
/// into other micro-batches, losses within max(3x that spread, 1e-3), and nearer to torch's bf16
/// result than its f32 result is.
#[test]
fn packed_bf16_within_the_bounds_of_torch_bf16() {
    let reference = Reference::open(&window(), "full");
    let spread = &reference.meta["bf16_rebatched"];
    let bound = |key: &str| 3.0 * spread[key].as_f64().unwrap();
    let loss_tol = bound("worst_loss_err").max(1e-3);
    for (world, seq_len, micro_batch) in [(1, 50, 2), (2, 50, 1)] {
        let config = packed_config(&window(), "full", seq_len, micro_batch, &reference).replacen("[data]", "dtype = \"bf16\"\n[data]", 1);
        let run = train(world, &config, "hf", &[]);
        run.assert_success();
        for (i, m) in run.metrics_of_steps(reference.f64("steps") as u64).iter().enumerate() {
            let (loss, expected) = (m["loss"].as_f64().unwrap(), reference.meta["losses_bf16"][i].as_f64().unwrap());
            assert!((loss - expected).abs() <= loss_tol, "step {}: loss {loss} vs torch bf16 {expected}", i + 1);
        }
        let (mut ours_sq, mut f32_sq, mut ref_sq) = (0.0, 0.0, 0.0);
        for (name, ours) in trained(&run) {
            let theirs = reference.tensors.read_f32(&format!("bf16.{name}")).unwrap();
            let (norm_err, max_err) = (norm_rel(&ours, &theirs), max_rel(&ours, &theirs) as f64);
            assert!(
                norm_err <= bound("worst_norm_rel") && max_err <= bound("worst_max_rel"),
                "{name}: norm {norm_err:e}, max {max_err:e} from torch bf16"
            );
            let f32_values = reference.tensors.read_f32(&format!("torch32.{name}")).unwrap();
            let sq = |a: &[f32]| a.iter().zip(&theirs).map(|(x, y)| ((x - y) as f64).powi(2)).sum::<f64>();
            (ours_sq, f32_sq) = (ours_sq + sq(&ours), f32_sq + sq(&f32_values));
            ref_sq += theirs.iter().map(|&v| (v as f64).powi(2)).sum::<f64>();
        }
        let (ours, f32_ref) = ((ours_sq / ref_sq).sqrt(), (f32_sq / ref_sq).sqrt());
        assert!(ours < f32_ref, "torch's f32 result ({f32_ref:e}) is nearer to torch's bf16 one than ours ({ours:e})");
    }
}

/// The start-up line says how full the packed rows are.
#[test]
fn start_up_reports_packing_efficiency() {
    let reference = Reference::open(&window(), "full");
    let config = packed_config(&window(), "full", 50, 2, &reference).replace("steps = 3", "steps = 1");
    let run = train(1, &config, "none", &[]);
    run.assert_success();
    let stdout = String::from_utf8_lossy(&run.output.stdout);
    let line = "packing: 7 examples in 2 rows of 50 tokens (3.50 examples a row), 98.0% of the rows' capacity is real tokens";
    assert!(stdout.contains(line), "{stdout}");
}
