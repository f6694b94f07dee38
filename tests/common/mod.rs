//! Helpers shared by the cross-crate tests: fixture paths, the fixture data, comparisons.
#![allow(dead_code)] // each test binary uses a different subset

use std::path::PathBuf;

pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

pub fn tiny() -> PathBuf {
    fixtures().join("tiny-mistral")
}

pub fn reference_json(dir: &std::path::Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap()).unwrap()
}

/// (input_ids, labels) rows of a tokenized JSONL file.
pub fn read_rows(path: &std::path::Path) -> Vec<(Vec<i64>, Vec<i64>)> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let ids = v["input_ids"].as_array().unwrap().iter().map(|x| x.as_i64().unwrap()).collect();
            let labels = v["labels"].as_array().unwrap().iter().map(|x| x.as_i64().unwrap()).collect();
            (ids, labels)
        })
        .collect()
}

/// max |a - b| / max |b|
pub fn max_rel(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let diff = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max);
    let scale = b.iter().map(|y| y.abs()).fold(0.0, f32::max);
    diff / scale
}

pub fn max_abs(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// ||a - b|| / ||b||
pub fn norm_rel(a: &[f32], b: &[f32]) -> f64 {
    let diff: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let norm: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (diff / norm).sqrt()
}
