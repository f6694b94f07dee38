//! Seconds to draw a model's random initialisation (`model.init = "random"`), every parameter
//! whole, on all cores, as the GPU check's 7B-shape rows do at start-up.
//!
//!   cargo bench -p shard-zero --bench random_init -- CONFIG.json [LAYERS]
//!
//! LAYERS overrides the config's `num_hidden_layers` (the GPU check uses 4 of Mistral-7B's 32).
//! A relative CONFIG is read from the workspace root: `cargo bench` runs benches in their
//! package's directory (crates/zero), not where it was typed.

use std::path::PathBuf;
use std::time::Instant;

use shard_model::{MistralConfig, all_params};
use shard_zero::{ParamSource, RandomInit};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    let config = args.first().expect("usage: random_init CONFIG.json [LAYERS]");
    let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut cfg = MistralConfig::from_file(&workspace.join(config)).unwrap();
    if let Some(layers) = args.get(1) {
        cfg.num_hidden_layers = layers.parse().expect("a number of layers");
    }
    let init = RandomInit { seed: 0, std: cfg.initializer_range };
    let (mut values, mut count) = (Vec::new(), 0usize);
    let started = Instant::now();
    for spec in all_params(&cfg) {
        let len = spec.shape.iter().product();
        values.clear();
        init.read(&spec, 0, len, &mut values).unwrap();
        count += len;
    }
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "{count} values ({} layers) in {seconds:.2} s on {} threads: {:.0} M values/s",
        cfg.num_hidden_layers,
        rayon::current_num_threads(),
        count as f64 / seconds / 1e6
    );
}
