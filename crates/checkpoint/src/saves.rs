//! The directory protocol of saves, under `<output.dir>/checkpoints/`:
//!
//! - `step-NNNNNNN/` holds one `rank-RRRRR-of-WWWWW.safetensors` per rank, `train_state.json`
//!   and, written last, the marker `COMPLETE`; a directory without the marker is not a checkpoint.
//! - `latest` names the newest complete one; it is replaced by an atomic rename.
//! - Older complete checkpoints beyond `keep_last` are removed only once a newer one is complete.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::{CheckpointError, TrainState};

pub const MARKER: &str = "COMPLETE";
pub const STATE_FILE: &str = "train_state.json";
const LATEST: &str = "latest";

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CheckpointError + '_ {
    move |source| CheckpointError::Io { path: path.to_owned(), source }
}

/// `<root>/step-NNNNNNN`
pub fn step_dir(root: &Path, step: u64) -> PathBuf {
    root.join(format!("step-{step:07}"))
}

pub fn rank_file_name(rank: usize, world_size: usize) -> String {
    format!("rank-{rank:05}-of-{world_size:05}.safetensors")
}

/// Writes `contents` to `path` durably: a temporary file, synced, renamed, directory synced.
fn write_durably(path: &Path, contents: &[u8]) -> Result<(), CheckpointError> {
    let tmp = path.with_extension("tmp");
    let mut file = File::create(&tmp).map_err(io(&tmp))?;
    file.write_all(contents).map_err(io(&tmp))?;
    file.sync_all().map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))?;
    sync_dir(path.parent().expect("a file in a directory"))
}

fn sync_dir(dir: &Path) -> Result<(), CheckpointError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

/// Rank 0's part of a save, after every rank has synced its file (a barrier): the train state,
/// then the marker, then `latest`, then the clean-up. Returns what it removed, for the log.
pub fn finalize(root: &Path, dir: &Path, state: &TrainState, keep_last: usize) -> Result<Vec<String>, CheckpointError> {
    let json = serde_json::to_vec_pretty(state).expect("serializable");
    write_durably(&dir.join(STATE_FILE), &json)?;
    write_durably(&dir.join(MARKER), b"")?;
    let name = dir.file_name().expect("step-N").to_string_lossy();
    write_durably(&root.join(LATEST), format!("{name}\n").as_bytes())?;
    prune(root, keep_last)
}

/// Whether `dir` is a complete checkpoint.
pub fn is_complete(dir: &Path) -> bool {
    dir.join(MARKER).is_file()
}

/// Step directories under `root`, oldest first.
fn step_dirs(root: &Path) -> Result<Vec<PathBuf>, CheckpointError> {
    let Ok(entries) = std::fs::read_dir(root) else { return Ok(Vec::new()) };
    let mut dirs: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_dir() && p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("step-")))
        .collect();
    dirs.sort();
    Ok(dirs)
}

/// Removes complete checkpoints beyond the newest `keep_last` (0 keeps all) and every
/// incomplete one older than the newest complete one (a save that died).
pub fn prune(root: &Path, keep_last: usize) -> Result<Vec<String>, CheckpointError> {
    let dirs = step_dirs(root)?;
    let complete: Vec<&PathBuf> = dirs.iter().filter(|d| is_complete(d)).collect();
    let Some(newest) = complete.last() else { return Ok(Vec::new()) };
    let incomplete: Vec<&PathBuf> = dirs.iter().filter(|d| !is_complete(d) && *d < *newest).collect();
    let mut removed = Vec::new();
    let old_complete = if keep_last == 0 { 0 } else { complete.len().saturating_sub(keep_last) };
    for dir in &complete[..old_complete] {
        std::fs::remove_dir_all(dir).map_err(io(dir))?;
        removed.push(format!("removed old checkpoint {}", dir.display()));
    }
    for dir in incomplete {
        std::fs::remove_dir_all(dir).map_err(io(dir))?;
        removed.push(format!("removed incomplete checkpoint {} (a save that did not finish)", dir.display()));
    }
    Ok(removed)
}

/// Removes every incomplete step directory (saves that did not finish), for a resume that has
/// found the complete checkpoint it starts from. Returns what it removed, for the log.
pub fn remove_incomplete(root: &Path) -> Result<Vec<String>, CheckpointError> {
    let mut removed = Vec::new();
    for dir in step_dirs(root)?.into_iter().filter(|d| !is_complete(d)) {
        std::fs::remove_dir_all(&dir).map_err(io(&dir))?;
        removed.push(format!("removed incomplete checkpoint {} (a save that did not finish)", dir.display()));
    }
    Ok(removed)
}

/// The checkpoint `spec` names: `latest` (under `root`), or a directory. `latest` falls back to
/// the newest complete checkpoint when the one it names is incomplete or gone; the second value
/// says so, for the log.
pub fn resolve(root: &Path, spec: &Path) -> Result<(PathBuf, Option<String>), CheckpointError> {
    if spec != Path::new(LATEST) {
        if !spec.is_dir() {
            return Err(CheckpointError::NotADirectory(spec.to_owned()));
        }
        if !is_complete(spec) {
            return Err(CheckpointError::Incomplete(spec.to_owned()));
        }
        return Ok((spec.to_owned(), None));
    }
    let named = std::fs::read_to_string(root.join(LATEST)).ok().map(|n| root.join(n.trim()));
    if let Some(dir) = named.as_ref().filter(|d| is_complete(d)) {
        return Ok((dir.clone(), None));
    }
    let newest = step_dirs(root)?.into_iter().rev().find(|d| is_complete(d));
    match (newest, named) {
        (Some(dir), named) => {
            let why = match named {
                Some(n) => format!("{} is incomplete or gone; resuming from {} instead", n.display(), dir.display()),
                None => format!("{} has no `latest`; resuming from {}", root.display(), dir.display()),
            };
            Ok((dir, Some(why)))
        }
        (None, _) => Err(CheckpointError::NoCheckpoint(root.to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn make(root: &Path, step: u64, complete: bool) -> PathBuf {
        let dir = step_dir(root, step);
        std::fs::create_dir_all(&dir).unwrap();
        if complete {
            std::fs::write(dir.join(MARKER), "").unwrap();
        }
        dir
    }

    #[test]
    fn latest_falls_back_and_prune_keeps_the_newest() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        make(root, 1, true);
        make(root, 2, true);
        let partial = make(root, 3, false);
        std::fs::write(root.join(LATEST), "step-0000003\n").unwrap();
        let (dir, warning) = resolve(root, Path::new("latest")).unwrap();
        assert_eq!(dir, step_dir(root, 2));
        assert!(warning.unwrap().contains("step-0000003"));
        assert!(matches!(resolve(root, &partial), Err(CheckpointError::Incomplete(_))));

        make(root, 4, true);
        let removed = prune(root, 2).unwrap();
        assert_eq!(removed.len(), 2, "{removed:?}");
        assert!(!step_dir(root, 1).exists() && !partial.exists());
        assert!(step_dir(root, 2).exists() && step_dir(root, 4).exists());
    }
}
