//! Trainable parameters and model-state bytes per rank for a model and LoRA setting at several
//! world sizes, from the engine's own accounting on the layouts (nothing is allocated, so any
//! model size works).
//!
//!   cargo bench -p shard-zero --bench model_states -- CONFIG.json [LORA_R|qlora:R|full] [WORLDS=1,2,4,8]
//!
//! With a rank, LoRA is on all seven projections with alpha = 2r; `qlora:R` holds the base's
//! projections as NF4 records (QLoRA). Both compute dtypes are shown:
//! they differ only in a frozen base (f32 or bf16); a trained parameter holds 16 bytes in either.

use std::path::Path;

use shard_model::{LoraConfig, MistralConfig, PROJECTIONS};
use shard_zero::{Dtype, state_footprint};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    let config = args.first().expect("usage: model_states CONFIG.json [LORA_R|qlora:R|full] [WORLDS]");
    let cfg = MistralConfig::from_file(Path::new(config)).unwrap();
    let setting = args.get(1).map(String::as_str);
    let nf4_base = setting.is_some_and(|s| s.starts_with("qlora:"));
    let lora = match setting.map(|s| s.trim_start_matches("qlora:")) {
        None | Some("full") => None,
        Some(r) => {
            let r: usize = r.parse().expect("a LoRA rank, qlora:RANK or `full`");
            Some(LoraConfig { r, alpha: 2.0 * r as f64, dropout: 0.0, targets: PROJECTIONS.map(String::from).to_vec() })
        }
    };
    let worlds: Vec<usize> = args.get(2).map_or("1,2,4,8", String::as_str).split(',').map(|w| w.parse().unwrap()).collect();
    println!("{:>6} {:>16} {:>22} {:>22}", "world", "trainable", "model states/rank f32", "model states/rank bf16");
    let gib = |bytes: u64| bytes as f64 / (1u64 << 30) as f64;
    for world in worlds {
        let [f32, bf16] = [Dtype::F32, Dtype::Bf16].map(|compute| state_footprint(&cfg, lora.as_ref(), nf4_base, world, compute));
        println!(
            "{world:>6} {:>16} {:>18.3} GiB {:>18.3} GiB",
            f32.trainable_params,
            gib(f32.model_state_bytes),
            gib(bf16.model_state_bytes)
        );
    }
}
