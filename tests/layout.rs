//! The repository's layout rules, read from its files: crates depend only on crates below them,
//! only the binary and kernels/ (and the files listed here) name a concrete backend, every root test is
//! registered, and nothing points to a path outside the repository.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

/// Every file under `dir`, recursively, in a stable order.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

fn relative(path: &Path) -> String {
    path.strip_prefix(root()).unwrap().display().to_string()
}

/// The `[section]` table of a Cargo.toml, up to the next table.
fn section<'a>(manifest: &'a str, name: &str) -> &'a str {
    let header = format!("[{name}]\n");
    let start = if manifest.starts_with(&header) {
        Some(header.len())
    } else {
        manifest.find(&format!("\n{header}")).map(|i| i + 1 + header.len())
    };
    start.map_or("", |start| manifest[start..].split("\n[").next().unwrap())
}

/// A package's `name = "..."`.
fn package_name(manifest: &str) -> String {
    let line = section(manifest, "package").lines().find(|l| l.starts_with("name = ")).expect("a package name");
    line.trim_start_matches("name = ").trim_matches('"').to_owned()
}

/// The workspace crates, each with the workspace crates it depends on (not counting
/// dev-dependencies: a crate's own tests may use crates above it).
fn crate_dependencies() -> BTreeMap<String, Vec<String>> {
    let mut crates = BTreeMap::new();
    let crate_dirs = std::fs::read_dir(root().join("crates")).unwrap().map(|dir| dir.unwrap().path());
    for dir in crate_dirs.chain([root().join("kernels")]) {
        let manifest = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap();
        let dependencies = section(&manifest, "dependencies")
            .lines()
            .filter_map(|line| line.split([' ', '.', '=']).next())
            .filter(|name| name.starts_with("shard-"))
            .map(str::to_owned)
            .collect();
        crates.insert(package_name(&manifest), dependencies);
    }
    crates
}

/// Each workspace crate's layer (docs/design.md): a crate may depend only on crates of lower
/// layers. The shared vocabulary and the kernels are the bottom; the model, the collectives, NF4 and the data pipeline
/// know nothing of each other; checkpoints and the planner sit on them, the engine on those, the
/// trainer on the engine, and the binary on everything.
const LAYERS: [(&str, usize); 11] = [
    ("shard-core", 0),
    ("shard-kernels", 0),
    ("shard-model", 1),
    ("shard-comm", 1),
    ("shard-nf4", 1),
    ("shard-data", 1),
    ("shard-checkpoint", 2),
    ("shard-plan", 2),
    ("shard-zero", 3),
    ("shard-train-core", 4),
    ("shard-train", 5),
];

#[test]
fn crates_depend_only_on_crates_below_them() {
    let layers: BTreeMap<&str, usize> = LAYERS.into_iter().collect();
    let crates = crate_dependencies();
    for (name, dependencies) in &crates {
        let layer = *layers.get(name.as_str()).unwrap_or_else(|| panic!("{name} has no layer in tests/layout.rs: give it one"));
        for dependency in dependencies {
            let below = layers.get(dependency.as_str()).unwrap_or_else(|| panic!("{name} depends on {dependency}, which has no layer"));
            assert!(*below < layer, "{name} (layer {layer}) depends on {dependency} (layer {below}): dependencies point down only");
        }
    }
    assert_eq!(crates.len(), LAYERS.len(), "a layer for a crate that is gone: {:?}", crates.keys());
    // The binary reaches the engine through the trainer only.
    assert!(crates["shard-train"].contains(&"shard-train-core".to_owned()));
    assert!(!crates["shard-train"].contains(&"shard-zero".to_owned()), "the engine is the trainer's business");
}

/// Identifiers that name a concrete Burn backend, its device or its tensor type. `Cuda` and
/// `Wgpu` are also `runtime.device`'s values (`Device::Cuda`), so they count as `backend::Cuda`
/// and `backend::Wgpu` only.
const BACKEND_NAMES: [&str; 19] = [
    "burn_flex",
    "Flex",
    "FlexDevice",
    "FlexTensor",
    "burn_wgpu",
    "WgpuDevice",
    "WgpuRuntime",
    "burn_cuda",
    "CudaDevice",
    "CudaRuntime",
    "burn_ndarray",
    "NdArray",
    "burn_candle",
    "Candle",
    "burn_tch",
    "LibTorch",
    "burn_rocm",
    "HipRuntime",
    "burn_metal",
];

/// Library files of crates/ that name a concrete backend outside crates/cli, and why (kernels/
/// is where the backends' own kernels live).
const BACKEND_FILES: [&str; 2] = [
    // NCCL moves burn-cuda's device buffers, and the memory probe reads burn-cuda's pool.
    "crates/comm/src/nccl_collective.rs",
    "crates/train/src/metrics/device_memory.rs",
];

/// A source file's code before its unit tests, without its comment lines.
fn library_code(text: &str) -> String {
    let code = text.split("#[cfg(test)]").next().unwrap();
    code.lines().filter(|line| !line.trim_start().starts_with("//")).collect::<Vec<_>>().join("\n")
}

#[test]
fn only_the_binary_the_kernels_and_the_listed_files_name_a_concrete_backend() {
    let mut naming = Vec::new();
    for file in files_under(&root().join("crates")) {
        let name = relative(&file);
        if !name.ends_with(".rs") || !name.contains("/src/") || name.starts_with("crates/cli/") {
            continue;
        }
        let code = library_code(&std::fs::read_to_string(&file).unwrap());
        let named: Vec<&str> = code
            .split(|c: char| !(c.is_alphanumeric() || c == '_'))
            .filter(|token| BACKEND_NAMES.contains(token))
            .chain(["backend::Cuda", "backend::Wgpu"].into_iter().filter(|path| code.contains(path)))
            .collect();
        if !named.is_empty() {
            naming.push(name.clone());
            assert!(
                BACKEND_FILES.contains(&name.as_str()),
                "{name} names {named:?}: only crates/cli picks a backend, and backend-specific kernels go in kernels/"
            );
        }
    }
    for listed in BACKEND_FILES {
        assert!(naming.iter().any(|n| n == listed), "{listed} is listed in tests/layout.rs but names no backend: take it off the list");
    }
}

/// The `path` of every `[[test]]` of crates/cli/Cargo.toml, and the file names under tests/.
#[test]
fn every_root_test_is_registered() {
    let manifest = std::fs::read_to_string(root().join("crates/cli/Cargo.toml")).unwrap();
    let registered: Vec<&str> = manifest
        .split("\n[[test]]\n")
        .skip(1)
        .filter_map(|entry| entry.lines().find_map(|l| l.strip_prefix("path = \"../../tests/")))
        .map(|path| path.trim_end_matches('"'))
        .collect();
    let mut files = Vec::new();
    for entry in std::fs::read_dir(root().join("tests")).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        if name.ends_with(".rs") {
            assert!(registered.contains(&name.as_str()), "tests/{name} is not a [[test]] in crates/cli/Cargo.toml: it would never run");
            files.push(name);
        }
    }
    for path in registered {
        assert!(files.iter().any(|f| f == path), "crates/cli/Cargo.toml registers tests/{path}, which does not exist");
    }
}

/// Users clone only the repository: no file of it may send them to a path beside it.
#[test]
fn nothing_points_outside_the_repository() {
    // Spelled in pieces so that this file does not match itself.
    let outside = [concat!("..", "/shared"), concat!("shared", "/fixtures"), concat!("shared", "/tools"), concat!("shared", "/DESIGN")];
    let mut files: Vec<PathBuf> = ["README.md", "Cargo.toml"].iter().map(|f| root().join(f)).collect();
    for dir in ["docs", "tests", "tools", "crates", "launch", "configs", "benches", ".ci"] {
        files.extend(files_under(&root().join(dir)));
    }
    for file in files {
        // Binary files (weights, charts stored as bytes) hold no paths worth checking.
        let Ok(text) = std::fs::read_to_string(&file) else { continue };
        for pattern in outside {
            assert!(!text.contains(pattern), "{} refers to {pattern}, outside the repository", relative(&file));
        }
    }
}
