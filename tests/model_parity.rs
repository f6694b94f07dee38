//! The Burn model against Hugging Face transformers on the tiny fixtures: logits, loss and every
//! parameter's gradient, in f32.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use burn::backend::{Autodiff, Flex};
use burn::tensor::{Int, Tensor, TensorData};
use common::*;
use shard_checkpoint::{HfCheckpoint, load_weights};
use shard_model::{Mistral, MistralConfig, all_params, cross_entropy_sum, target_count};

type B = Autodiff<Flex>;

/// Checks logits, loss and gradients of `batch0` (the first step's examples) in
/// `dir/reference.safetensors`.
fn check_against_reference(dir: &Path) {
    let cfg = MistralConfig::from_file(&dir.join("config.json")).unwrap();
    let device = Default::default();
    let ckpt = HfCheckpoint::open(dir).unwrap();
    let reference = HfCheckpoint::open_file(&dir.join("reference.safetensors")).unwrap();

    // Every parameter a leaf, so that its gradient can be read after backward.
    let mut leaves = BTreeMap::new();
    let weights = load_weights::<B>(&ckpt, &cfg, &device).unwrap().map_tensors(|name, t| {
        let leaf = t.require_grad();
        leaves.insert(name.to_owned(), leaf.clone());
        leaf
    });
    let model = Mistral::from_weights(&cfg, weights).unwrap();

    let batch_size = reference_json(dir)["examples_per_step"].as_u64().unwrap() as usize;
    let rows = read_rows(&dir.join("data.jsonl"));
    let rows = &rows[..batch_size];
    let seq = rows[0].0.len();
    let ids: Vec<i64> = rows.iter().flat_map(|r| r.0.clone()).collect();
    let labels: Vec<i64> = rows.iter().flat_map(|r| r.1.clone()).collect();
    let ids = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [batch_size, seq]), &device);

    let logits = model.forward(ids);
    let loss = cross_entropy_sum(logits.clone(), &labels).div_scalar(target_count(&labels, seq) as f64);

    let ref_logits = reference.read_f32("batch0.logits").unwrap();
    let logits_vec = logits.into_data().to_vec::<f32>().unwrap();
    assert!(max_abs(&logits_vec, &ref_logits) < 1e-4, "logits off by {}", max_abs(&logits_vec, &ref_logits));
    let ref_loss = reference.read_f32("batch0.loss").unwrap()[0];
    let loss_value = loss.clone().into_scalar();
    assert!((loss_value - ref_loss).abs() < 1e-4, "loss {loss_value} vs {ref_loss}");

    let grads = loss.backward();
    for (name, leaf) in &leaves {
        let grad = leaf.grad(&grads).unwrap().into_data().to_vec::<f32>().unwrap();
        let ref_grad = reference.read_f32(&format!("batch0.grad.{name}")).unwrap();
        let err = max_rel(&grad, &ref_grad);
        assert!(err < 1e-4, "gradient of {name} off by {err} (relative)");
    }
}

#[test]
fn tiny_mistral_matches_transformers() {
    check_against_reference(&tiny());
}

#[test]
fn sliding_window_matches_transformers() {
    check_against_reference(&fixtures().join("tiny-mistral-window"));
}

#[test]
fn bf16_sharded_copy_is_the_rounded_f32_weights() {
    let cfg = MistralConfig::from_file(&tiny().join("config.json")).unwrap();
    let f32_ckpt = HfCheckpoint::open(&tiny()).unwrap();
    let bf16_ckpt = HfCheckpoint::open(&tiny().join("sharded")).unwrap();
    for spec in all_params(&cfg) {
        let rounded: Vec<f32> = f32_ckpt.read_f32(&spec.name).unwrap().into_iter().map(|v| half::bf16::from_f32(v).to_f32()).collect();
        assert_eq!(bf16_ckpt.read_f32(&spec.name).unwrap(), rounded, "{}", spec.name);
        assert_eq!(bf16_ckpt.dtype(&spec.name), Some(shard_checkpoint::DiskDtype::BF16));
    }
}
