//! The bytes of a model quantized to NF4 as `shard-train quantize` (and transformers +
//! bitsandbytes) store it, from config.json alone: every decoder linear in NF4 with double
//! quantization, the embedding, norms and head in a 16-bit dtype. Nothing is allocated.
//!
//!   cargo bench -p shard-checkpoint --bench nf4_bytes -- $PWD/tests/fixtures/mistral-7b-v0.1/config.json
//!
//! (cargo runs benches in the crate's directory: give an absolute path.)

use std::path::Path;

use shard_checkpoint::{DiskDtype, QuantState, TensorHeader, nf4_part_headers};
use shard_model::{MistralConfig, all_params, is_quantized_linear};
use shard_plan::group_digits;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    let config = args.first().expect("usage: nf4_bytes CONFIG.json");
    let cfg = MistralConfig::from_file(Path::new(config)).unwrap();
    let mut parts = [0usize; 6];
    let (mut weights, mut kept) = (0usize, 0usize);
    for spec in all_params(&cfg) {
        if !is_quantized_linear(&spec.name) {
            kept += TensorHeader { name: spec.name, dtype: DiskDtype::BF16, shape: spec.shape }.bytes();
            continue;
        }
        // The quant state's length varies with the digits of its offset; this one is typical.
        let state = QuantState { dtype: DiskDtype::BF16, shape: spec.shape.clone(), offset: 0.012_345_678 };
        for (sum, header) in parts.iter_mut().zip(nf4_part_headers(&spec.name, spec.numel(), state.to_json().len())) {
            *sum += header.bytes();
        }
        weights += spec.numel();
    }
    let nf4: usize = parts.iter().sum();
    let gb =
        |b: usize| format!("{:>15} B  {:>6.3} GB  {:>6.3} GiB", group_digits(b as u64), b as f64 / 1e9, b as f64 / (1u64 << 30) as f64);
    println!("{config}: {} decoder-linear weights in NF4", group_digits(weights as u64));
    for (what, bytes) in [
        "packed codes",
        "absmax codes (1 per 64)",
        "nested absmax (f32 per 256 blocks)",
        "nested maps (256 x f32)",
        "NF4 maps (16 x f32)",
        "quant states (JSON)",
    ]
    .iter()
    .zip(parts)
    {
        println!("  {what:<36}{}", gb(bytes));
    }
    println!("  {:<36}{}   {:.4} bits per weight", "NF4 linears", gb(nf4), nf4 as f64 * 8.0 / weights as f64);
    println!("  {:<36}{}", "embedding, norms, lm_head in bf16", gb(kept));
    println!("  {:<36}{}", "checkpoint (tensor data)", gb(nf4 + kept));
}
