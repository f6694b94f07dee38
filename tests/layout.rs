//! The layout the issue asked for: the binary is a thin edge over the trainer crate (argument
//! parsing, the backend choice, printing), under 600 lines, and only it picks concrete types.

use std::path::Path;

fn cli_sources() -> Vec<(String, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    files.into_iter().map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read_to_string(&p).unwrap())).collect()
}

#[test]
fn the_binary_is_a_thin_edge_over_the_trainer() {
    let sources = cli_sources();
    let lines: usize = sources.iter().map(|(_, text)| text.lines().count()).sum();
    assert!(lines < 600, "crates/cli has {lines} lines");
    for (name, text) in &sources {
        assert!(!text.contains("shard_zero"), "{name}: the engine is the trainer's business");
    }
    let manifest = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml")).unwrap();
    let dependencies = manifest.split("[dependencies]").nth(1).unwrap().split("\n[").next().unwrap();
    assert!(dependencies.contains("shard-train-core.workspace = true"), "{dependencies}");
    assert!(!dependencies.contains("shard-zero"), "{dependencies}");
}
