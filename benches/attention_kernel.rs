//! The attention op alone on the CPU (burn-flex, f32): forward, and forward + backward, of the
//! fused kernel against the eager composition, on one head shape.
//!
//!   cargo bench -p shard-kernels --bench attention_kernel -- [SEQ=4096] [HEADS=8] [KV_HEADS=2] [HEAD_DIM=64] [ITERS=3] [ATTENTION=fused]
//!
//! One row of one sequence, causal. RAYON_NUM_THREADS sets the threads (the training binary gives
//! each rank its share of the cores). Prints one JSON line: milliseconds (median of ITERS, after
//! one warm-up).

use std::time::Instant;

use burn::backend::{Autodiff, Flex};
use burn::tensor::{Distribution, Tensor};
use shard_kernels::{AttentionLayout, eager_attention, fused_attention};

type B = Autodiff<Flex>;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    let arg = |i: usize, default: &str| args.get(i).cloned().unwrap_or_else(|| default.into());
    let number = |i: usize, default: &str| arg(i, default).parse::<usize>().expect("a count");
    let (seq, heads, kv_heads, head_dim, iters) = (number(0, "4096"), number(1, "8"), number(2, "2"), number(3, "64"), number(4, "3"));
    let attention = arg(5, "fused");
    let attend = match attention.as_str() {
        "fused" => fused_attention::<B>,
        "eager" => eager_attention::<B>,
        other => panic!("ATTENTION = {other:?}: expected fused or eager"),
    };
    let device = Default::default();
    let random = |heads: usize| Tensor::<B, 4>::random([1, heads, seq, head_dim], Distribution::Normal(0.0, 1.0), &device).require_grad();
    let (q, k, v) = (random(heads), random(kv_heads), random(kv_heads));
    let layout = AttentionLayout::new(seq, &[vec![0]], None);
    let scale = 1.0 / (head_dim as f64).sqrt();

    let median = |mut times: Vec<f64>| {
        times.remove(0); // warm-up
        times.sort_by(f64::total_cmp);
        (times[times.len() / 2] * 10.0).round() / 10.0
    };
    let (mut forward, mut forward_backward) = (Vec::new(), Vec::new());
    for _ in 0..=iters {
        let started = Instant::now();
        let output = attend(q.clone(), k.clone(), v.clone(), &layout, scale);
        let _ = output.clone().into_data(); // the forward is done once its values are
        forward.push(started.elapsed().as_secs_f64() * 1e3);
        let _grads = output.sum().backward();
        forward_backward.push(started.elapsed().as_secs_f64() * 1e3);
    }
    println!(
        "{{\"attention\": \"{attention}\", \"seq\": {seq}, \"heads\": {heads}, \"kv_heads\": {kv_heads}, \"head_dim\": {head_dim}, \"ms_forward\": {}, \"ms_forward_backward\": {}, \"threads\": {}}}",
        median(forward),
        median(forward_backward),
        rayon::current_num_threads()
    );
}
