//! The run config's TOML before it is read as a config: a file may start from another
//! (`base = "other.toml"`, its keys merged under the file's own, table by table, in a chain of any
//! length), and `--set key=value` overrides come on top. Each file's relative paths are taken
//! from its own directory; an override is read as if written in the config file itself (a TOML
//! value, or else a bare string: `--set data.format=chat`), so it is typed and checked like the
//! file, and the resolved config that run.toml records holds it.

use std::path::{Path, PathBuf};

use toml::{Table, Value};

use super::RunConfigError;

/// The keys that hold paths, by section: resolved against the directory of the file that sets them.
const PATH_KEYS: [(&str, &str); 7] = [
    ("model", "path"),
    ("model", "config"),
    ("data", "path"),
    ("data", "tokenizer"),
    ("output", "dir"),
    ("lora", "init"),
    ("eval", "path"),
];

/// One `--set key=value`.
#[derive(Debug, Clone, PartialEq)]
pub struct Override {
    /// Dotted: `train.lr`.
    pub key: String,
    pub value: Value,
    /// As typed, for messages.
    pub text: String,
}

/// Parses `key=value` (clap's value parser of `--set`).
pub fn parse_override(text: &str) -> Result<Override, String> {
    let (key, raw) = text.split_once('=').ok_or_else(|| format!("{text:?}: expected key=value, e.g. train.lr=1e-4"))?;
    let key = key.trim();
    if key.is_empty() || key.split('.').any(str::is_empty) {
        return Err(format!("{text:?}: the key should be dotted names, e.g. train.lr"));
    }
    let value = match toml::from_str::<Table>(&format!("value = {raw}")) {
        Ok(mut table) => table.remove("value").expect("parsed above"),
        Err(_) => Value::String(raw.to_owned()),
    };
    Ok(Override { key: key.to_owned(), value, text: text.to_owned() })
}

/// The config at `path` with its base files merged under it, or `None` when it has no base
/// (then the file is read as it is, with its own line numbers in errors).
pub(super) fn with_bases(path: &Path) -> Result<Option<Table>, RunConfigError> {
    let table = read_table(path)?;
    if !table.contains_key("base") {
        return Ok(None);
    }
    let mut chain = Vec::new();
    merged_file(path, table, &mut chain).map(Some)
}

/// `table` with `overrides` set in it; an error names the override that cannot be set.
pub(super) fn apply_overrides(mut table: Table, overrides: &[Override], path: &Path) -> Result<Table, RunConfigError> {
    for o in overrides {
        let mut names: Vec<&str> = o.key.split('.').collect();
        let leaf = names.pop().expect("checked when parsed");
        let mut at = &mut table;
        for (depth, name) in names.iter().enumerate() {
            let entry = at.entry(name.to_string()).or_insert_with(|| Value::Table(Table::new()));
            at = entry.as_table_mut().ok_or_else(|| RunConfigError::Parse {
                path: path.to_owned(),
                message: format!("--set {}: `{}` is not a table", o.text, names[..=depth].join(".")),
            })?;
        }
        at.insert(leaf.to_owned(), o.value.clone());
    }
    Ok(table)
}

fn read_table(path: &Path) -> Result<Table, RunConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| RunConfigError::Io { path: path.to_owned(), source })?;
    toml::from_str(&text).map_err(|e| RunConfigError::Parse { path: path.to_owned(), message: e.to_string() })
}

/// `table` (read from `path`) over its chain of bases, every relative path made absolute.
fn merged_file(path: &Path, mut table: Table, chain: &mut Vec<PathBuf>) -> Result<Table, RunConfigError> {
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
    // The file itself (`a/../b.toml` is `b.toml`), to see a chain come back to it.
    let file = path.canonicalize().unwrap_or_else(|_| absolute.clone());
    if chain.contains(&file) {
        let names: Vec<String> = chain.iter().chain([&file]).map(|p| p.display().to_string()).collect();
        return Err(RunConfigError::Parse { path: path.to_owned(), message: format!("`base` loops: {}", names.join(" -> ")) });
    }
    chain.push(file);
    let dir = absolute.parent().map(Path::to_owned).unwrap_or_default();
    resolve_paths(&mut table, &dir);
    match table.remove("base") {
        None => Ok(table),
        Some(Value::String(base)) if !base.is_empty() => {
            let base_path = dir.join(base);
            let base_table = read_table(&base_path)?;
            let mut merged = merged_file(&base_path, base_table, chain)?;
            merge(&mut merged, table);
            Ok(merged)
        }
        Some(other) => Err(RunConfigError::Parse {
            path: path.to_owned(),
            message: format!("`base` = {other}: expected the path of another run config, e.g. base = \"common.toml\""),
        }),
    }
}

/// `over`'s keys into `under`: tables merged key by key, any other value replaced.
fn merge(under: &mut Table, over: Table) {
    for (key, value) in over {
        match (under.get_mut(&key), value) {
            (Some(Value::Table(below)), Value::Table(above)) => merge(below, above),
            (_, value) => {
                under.insert(key, value);
            }
        }
    }
}

fn resolve_paths(table: &mut Table, dir: &Path) {
    for (section, key) in PATH_KEYS {
        if let Some(Value::String(path)) = table.get_mut(section).and_then(Value::as_table_mut).and_then(|t| t.get_mut(key))
            && !path.is_empty()
            && Path::new(path.as_str()).is_relative()
        {
            *path = super::relative::from_dir(dir, Path::new(path.as_str())).display().to_string();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_are_toml_values_or_bare_strings() {
        let o = parse_override("train.lr=1e-4").unwrap();
        assert_eq!((o.key.as_str(), o.value), ("train.lr", Value::Float(1e-4)));
        assert_eq!(parse_override("data.format=chat").unwrap().value, Value::String("chat".into()));
        assert_eq!(parse_override("lora.targets=[\"q_proj\"]").unwrap().value, Value::Array(vec![Value::String("q_proj".into())]));
        assert!(parse_override("train.lr").unwrap_err().contains("expected key=value"));
        assert!(parse_override("train..lr=1").unwrap_err().contains("dotted names"));
    }

    #[test]
    fn a_file_is_merged_over_its_bases_with_paths_from_each_files_directory() {
        let tmp = std::env::temp_dir().join(format!("run-config-layers-{}", std::process::id()));
        std::fs::create_dir_all(tmp.join("common")).unwrap();
        std::fs::write(tmp.join("common/root.toml"), "[data]\npath = \"data.jsonl\"\nseq_len = 64\n[train]\nlr = 1e-3\nsteps = 5\n")
            .unwrap();
        std::fs::write(tmp.join("common/mid.toml"), "base = \"root.toml\"\n[train]\nsteps = 7\n").unwrap();
        std::fs::write(tmp.join("run.toml"), "base = \"common/mid.toml\"\n[model]\npath = \"ckpt\"\n[train]\nlr = 2e-4\n").unwrap();
        let table = with_bases(&tmp.join("run.toml")).unwrap().unwrap();
        assert_eq!(table["data"]["path"].as_str(), Some(tmp.join("common/data.jsonl").to_str().unwrap()));
        assert_eq!(table["model"]["path"].as_str(), Some(tmp.join("ckpt").to_str().unwrap()));
        assert_eq!((table["train"]["lr"].as_float(), table["train"]["steps"].as_integer()), (Some(2e-4), Some(7)));
        assert_eq!(table["data"]["seq_len"].as_integer(), Some(64));
        assert!(!table.contains_key("base"));

        std::fs::write(tmp.join("common/root.toml"), "base = \"../run.toml\"\n").unwrap();
        let msg = with_bases(&tmp.join("run.toml")).unwrap_err().to_string();
        assert!(msg.contains("`base` loops") && msg.contains("root.toml -> "), "{msg}");
        std::fs::write(tmp.join("run.toml"), "base = 3\n").unwrap();
        let msg = with_bases(&tmp.join("run.toml")).unwrap_err().to_string();
        assert!(msg.contains("`base` = 3: expected the path of another run config"), "{msg}");
        std::fs::remove_dir_all(&tmp).unwrap();
    }
}
