//! Forward + backward time of the whole model on CPU (one process, burn-flex),
//! against transformers on the same shapes with benches/model_fwd_bwd_torch.py.
//!
//!   cargo bench -p shard-model --bench model_fwd_bwd -- [PRESET=small] [BATCH=2] [SEQ=256] [ITERS=5] [ATTENTION=fused]
//!
//! Prints one JSON line: milliseconds per forward+backward (median of ITERS, after one warm-up).

use std::path::PathBuf;
use std::time::Instant;

use burn::backend::{Autodiff, Flex};
use burn::tensor::{Int, Tensor, TensorData};
use shard_core::AttentionPath;
use shard_model::{Mistral, MistralConfig, Weights, all_params, cross_entropy_sum, hash};

type B = Autodiff<Flex>;

// As in the shard-train binary (see crates/cli/src/main.rs).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    // As the binary does (crates/train/src/system/threads.rs, keep_freed_memory): mimalloc option 15,
    // purge_delay, to -1.
    unsafe extern "C" {
        fn mi_option_set(option: std::ffi::c_int, value: std::ffi::c_long);
    }
    unsafe { mi_option_set(15, -1) };
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    let arg = |i: usize, default: &str| args.get(i).cloned().unwrap_or_else(|| default.into());
    let preset = arg(0, "small");
    let (batch, seq, iters): (usize, usize, usize) =
        (arg(1, "2").parse().unwrap(), arg(2, "256").parse().unwrap(), arg(3, "5").parse().unwrap());
    let attention = match arg(4, "fused").as_str() {
        "fused" => AttentionPath::Fused,
        "eager" => AttentionPath::Eager,
        other => panic!("ATTENTION = {other:?}: expected fused or eager"),
    };
    let config_path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("../../tests/fixtures/presets/{preset}/config.json"));
    let cfg = MistralConfig::from_file(&config_path).unwrap();
    let device = Default::default();

    // Weights: N(0, 0.02), norms 1, as HF's init; values do not matter for the timing.
    let mut weights = Weights::<B>::default();
    for spec in all_params(&cfg) {
        let stream = hash::stream(0, &spec.name);
        let values: Vec<f32> = if spec.name.ends_with("norm.weight") {
            vec![1.0; spec.numel()]
        } else {
            (0..spec.numel()).map(|i| ((hash::uniform(stream, i as u64) - 0.5) * 0.07) as f32).collect()
        };
        let leaf = Tensor::<B, 1>::from_data(TensorData::new(values, [spec.numel()]), &device).require_grad();
        weights.insert(spec.name, leaf);
    }
    let model = Mistral::from_weights(&cfg, weights).unwrap();
    let ids: Vec<i64> = (0..batch * seq).map(|i| 3 + (hash::mix(1, i as u64) % (cfg.vocab_size as u64 - 3)) as i64).collect();

    let mut times = Vec::new();
    for _ in 0..=iters {
        let started = Instant::now();
        let input = Tensor::<B, 2, Int>::from_data(TensorData::new(ids.clone(), [batch, seq]), &device);
        let loss = cross_entropy_sum(model.forward_attending(input, attention), &ids).div_scalar((batch * (seq - 1)) as f64);
        let _grads = loss.backward();
        times.push(started.elapsed().as_secs_f64() * 1e3);
    }
    times.remove(0); // warm-up
    times.sort_by(f64::total_cmp);
    println!(
        "{}",
        serde_json::json!({ "system": "shard-train (burn-flex)", "preset": preset, "batch": batch, "seq": seq, "attention": arg(4, "fused"),
                            "ms_per_fwd_bwd": (times[times.len() / 2] * 10.0).round() / 10.0, "threads": std::thread::available_parallelism().map_or(1, usize::from) })
    );
}
