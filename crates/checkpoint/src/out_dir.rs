//! The directory a command writes whole (an export, a quantized checkpoint), written so that no
//! failure and no `--out` can lose what the user had:
//! - the files go into a fresh hidden sibling (`.<name>.partial-<pid>`), removed if the command
//!   fails before it finishes;
//! - the finished directory takes the place of `--out` in one step: a new name is a rename; an
//!   earlier export is swapped with the new one atomically (`renameat2(RENAME_EXCHANGE)`, or
//!   moved aside first where the file system cannot swap) and only then removed, so a kill leaves
//!   the old export or the new one, never neither;
//! - a directory that holds anything but what an export writes ([`is_export_file`]), and the
//!   places no export may replace (`/`, `$HOME`, the working directory and its ancestors, and
//!   the caller's own: the save being exported and its ancestors, the model being read), are
//!   refused; with `overwrite` the export's files are written into such a directory, replacing
//!   only files of the names an export writes, and the directory itself and everything else in it
//!   stay.

use std::path::{Path, PathBuf};

use crate::{COMPANION_FILES, CheckpointError};

/// Names an export or a quantized checkpoint writes: the weights (one file, or shards and their
/// index), config.json, peft's adapter files, and the model's companion files.
pub fn is_export_file(name: &str) -> bool {
    let shard = |n: &str| {
        let Some(rest) = n.strip_prefix("model-").and_then(|r| r.strip_suffix(".safetensors")) else { return false };
        let digits = |s: &str| s.len() == 5 && s.bytes().all(|b| b.is_ascii_digit());
        rest.split_once("-of-").is_some_and(|(i, n)| digits(i) && digits(n))
    };
    matches!(
        name,
        "config.json" | "model.safetensors" | "model.safetensors.index.json" | "adapter_model.safetensors" | "adapter_config.json"
    ) || COMPANION_FILES.contains(&name)
        || shard(name)
}

/// An output directory being written; [`OutDir::path`] is where its files go until
/// [`OutDir::commit`] puts them in place.
pub struct OutDir {
    target: PathBuf,
    staging: PathBuf,
    /// `overwrite` over a directory that may not be replaced: files are moved into it one by one.
    into_existing: bool,
    committed: bool,
}

impl OutDir {
    /// Checks `out` and makes its staging directory. `protected` are the caller's own places no
    /// export may replace (each with its ancestors); `overwrite` is the user's `--overwrite`.
    pub fn create(out: &Path, protected: &[&Path], overwrite: bool) -> Result<Self, CheckpointError> {
        let target = resolve(out)?;
        let refuse = |why: String| CheckpointError::OutDir { path: out.to_owned(), why };
        let holds_others = target.is_dir() && !other_entries(&target)?.is_empty();
        let protected_by = protected_place(&target, protected);
        if target.exists() && !target.is_dir() {
            return Err(refuse("it is a file, not a directory".into()));
        }
        if !overwrite {
            if let Some(what) = &protected_by {
                return Err(refuse(format!("it is {what}; an export may not replace it (choose a new directory)")));
            }
            if holds_others {
                let others = other_entries(&target)?;
                let shown: Vec<&str> = others.iter().take(5).map(String::as_str).collect();
                let more = if others.len() > 5 { format!(" and {} more", others.len() - 5) } else { String::new() };
                return Err(refuse(format!(
                    "it holds files that are not an export's ({}{more}); choose a new directory, or pass --overwrite to write the \
                     export's files into it (replacing only files of the names an export writes)",
                    shown.join(", ")
                )));
            }
        }
        let parent = target.parent().ok_or_else(|| refuse("it has no parent directory".into()))?;
        let name = target.file_name().ok_or_else(|| refuse("it names no directory".into()))?.to_string_lossy();
        remove_stale_staging(parent, &format!(".{name}.partial-"))?;
        let staging = parent.join(format!(".{name}.partial-{}", std::process::id()));
        std::fs::create_dir(&staging).map_err(io(&staging))?;
        Ok(Self { target, staging, into_existing: holds_others || protected_by.is_some(), committed: false })
    }

    /// Where the files are written until [`OutDir::commit`].
    pub fn path(&self) -> &Path {
        &self.staging
    }

    /// Puts the finished directory in place of `out` and returns it.
    pub fn commit(mut self) -> Result<PathBuf, CheckpointError> {
        test_hook("before-swap");
        if self.into_existing {
            self.move_files_into_target()?;
        } else if self.target.exists() {
            self.swap_with_previous_export()?;
        } else {
            std::fs::rename(&self.staging, &self.target).map_err(io(&self.target))?;
        }
        self.committed = true;
        Ok(self.target.clone())
    }

    /// The old export goes where the staging directory was, the new one takes its name, in one
    /// call where the file system can; then the old one is removed.
    fn swap_with_previous_export(&self) -> Result<(), CheckpointError> {
        if !exchange(&self.staging, &self.target) {
            let aside =
                self.staging.with_file_name(format!("{}-old", self.staging.file_name().expect("named in create").to_string_lossy()));
            std::fs::rename(&self.target, &aside).map_err(io(&self.target))?;
            std::fs::rename(&self.staging, &self.target).map_err(io(&self.target))?;
            std::fs::rename(&aside, &self.staging).map_err(io(&aside))?;
        }
        test_hook("after-swap");
        // Only an export's files are in it (checked in create), so this removes nothing else.
        std::fs::remove_dir_all(&self.staging).map_err(io(&self.staging))
    }

    fn move_files_into_target(&self) -> Result<(), CheckpointError> {
        let entries = std::fs::read_dir(&self.target).map_err(io(&self.target))?;
        for entry in entries {
            let entry = entry.map_err(io(&self.target))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if is_export_file(&name) && entry.file_type().map_err(io(&entry.path()))?.is_file() {
                std::fs::remove_file(entry.path()).map_err(io(&entry.path()))?;
            }
        }
        let staged = std::fs::read_dir(&self.staging).map_err(io(&self.staging))?;
        for entry in staged {
            let entry = entry.map_err(io(&self.staging))?;
            let to = self.target.join(entry.file_name());
            std::fs::rename(entry.path(), &to).map_err(io(&to))?;
        }
        std::fs::remove_dir(&self.staging).map_err(io(&self.staging))
    }
}

impl Drop for OutDir {
    /// A command that failed (or returned early) leaves no staging directory behind.
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_dir_all(&self.staging);
        }
    }
}

/// Staging directories (`<prefix><pid>`, and the `-old` of a swap) left by a command that was
/// killed: their process is gone from this host.
fn remove_stale_staging(parent: &Path, prefix: &str) -> Result<(), CheckpointError> {
    for entry in std::fs::read_dir(parent).map_err(io(parent))? {
        let entry = entry.map_err(io(parent))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix(prefix).map(|rest| rest.trim_end_matches("-old")) else { continue };
        let gone = pid.parse::<u32>().is_ok_and(|pid| !crate::pid::is_running(pid));
        if gone && entry.file_type().map_err(io(&entry.path()))?.is_dir() {
            std::fs::remove_dir_all(entry.path()).map_err(io(&entry.path()))?;
        }
    }
    Ok(())
}

/// `out` as an absolute path without `.`, `..` or links; its parent is created if missing.
fn resolve(out: &Path) -> Result<PathBuf, CheckpointError> {
    if out.as_os_str().is_empty() {
        return Err(CheckpointError::OutDir { path: out.to_owned(), why: "the path is empty".into() });
    }
    if out.exists() {
        return out.canonicalize().map_err(io(out));
    }
    let absolute = std::path::absolute(out).map_err(io(out))?;
    let (parent, name) = match (absolute.parent(), absolute.file_name()) {
        (Some(parent), Some(name)) => (parent, name),
        _ => return Err(CheckpointError::OutDir { path: out.to_owned(), why: "it names no directory".into() }),
    };
    std::fs::create_dir_all(parent).map_err(io(parent))?;
    Ok(parent.canonicalize().map_err(io(parent))?.join(name))
}

/// What `target` is, when it is a place no export may replace.
fn protected_place(target: &Path, protected: &[&Path]) -> Option<String> {
    let canonical = |p: &Path| p.canonicalize().ok();
    if target.parent().is_none() {
        return Some("the root directory".into());
    }
    if std::env::var_os("HOME").map(PathBuf::from).and_then(|h| canonical(&h)).is_some_and(|home| home == target) {
        return Some("the home directory".into());
    }
    if let Some(cwd) = std::env::current_dir().ok().and_then(|d| canonical(&d))
        && cwd.starts_with(target)
    {
        return Some(if cwd == target { "the working directory".into() } else { "an ancestor of the working directory".into() });
    }
    protected
        .iter()
        .filter_map(|p| canonical(p))
        .find(|p| p.starts_with(target))
        .map(|p| if p == target { format!("{} itself", p.display()) } else { format!("an ancestor of {}", p.display()) })
}

/// The entries of `dir` that an export does not write, sorted.
fn other_entries(dir: &Path) -> Result<Vec<String>, CheckpointError> {
    let mut others = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let entry = entry.map_err(io(dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let is_file = entry.file_type().map_err(io(&entry.path()))?.is_file();
        if !(is_file && is_export_file(&name)) {
            others.push(name);
        }
    }
    others.sort();
    Ok(others)
}

/// Swaps two directories in one call (Linux's `renameat2(RENAME_EXCHANGE)`); false where the
/// system or the file system cannot.
fn exchange(a: &Path, b: &Path) -> bool {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::ffi::OsStrExt;
        let (Ok(a), Ok(b)) = (std::ffi::CString::new(a.as_os_str().as_bytes()), std::ffi::CString::new(b.as_os_str().as_bytes())) else {
            return false;
        };
        // SAFETY: both are NUL-terminated paths that live across the call.
        unsafe { libc::renameat2(libc::AT_FDCWD, a.as_ptr(), libc::AT_FDCWD, b.as_ptr(), libc::RENAME_EXCHANGE) == 0 }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (a, b);
        false
    }
}

/// `SHARD_TRAIN_TEST_OUT_DIR_ABORT=<point>` ends the process at that point of a commit, as a kill
/// would (tests of what a kill leaves).
fn test_hook(point: &str) {
    if std::env::var("SHARD_TRAIN_TEST_OUT_DIR_ABORT").is_ok_and(|p| p == point) {
        std::process::abort();
    }
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> CheckpointError + '_ {
    move |source| CheckpointError::Io { path: path.to_owned(), source }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, names: &[&str]) {
        std::fs::create_dir_all(dir).unwrap();
        for name in names {
            std::fs::write(dir.join(name), name).unwrap();
        }
    }

    fn export_into(out: &Path, protected: &[&Path], overwrite: bool, names: &[&str]) -> Result<PathBuf, CheckpointError> {
        let dir = OutDir::create(out, protected, overwrite)?;
        write(dir.path(), names);
        dir.commit()
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into()).collect();
        names.sort();
        names
    }

    #[test]
    fn export_names_are_recognised() {
        for name in ["config.json", "model.safetensors", "model-00001-of-00003.safetensors", "tokenizer.json", "adapter_config.json"] {
            assert!(is_export_file(name), "{name}");
        }
        for name in ["metrics.jsonl", "run.toml", "model-1-of-3.safetensors", "checkpoints", "notes.txt", "model.bin"] {
            assert!(!is_export_file(name), "{name}");
        }
    }

    #[test]
    fn a_new_directory_appears_whole_and_a_previous_export_is_replaced() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("a/b/export");
        export_into(&out, &[], false, &["config.json", "model.safetensors"]).unwrap();
        assert_eq!(names(&out), ["config.json", "model.safetensors"]);
        export_into(&out, &[], false, &["config.json", "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]).unwrap();
        assert_eq!(names(&out), ["config.json", "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]);
        assert_eq!(names(out.parent().unwrap()), ["export"], "no staging or old directory is left");
    }

    #[test]
    fn a_directory_with_other_files_is_refused_and_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let run = tmp.path().join("run");
        write(&run, &["metrics.jsonl", "config.json"]);
        std::fs::create_dir(run.join("checkpoints")).unwrap();
        let err = export_into(&run, &[], false, &["config.json"]).unwrap_err().to_string();
        assert!(err.contains("checkpoints, metrics.jsonl") && err.contains("--overwrite"), "{err}");
        assert_eq!(names(&run), ["checkpoints", "config.json", "metrics.jsonl"]);
        assert_eq!(names(tmp.path()), ["run"]);
    }

    #[test]
    fn overwrite_replaces_only_an_exports_files() {
        let tmp = tempfile::tempdir().unwrap();
        let run = tmp.path().join("run");
        write(&run, &["metrics.jsonl", "model-00001-of-00002.safetensors", "config.json"]);
        export_into(&run, &[], true, &["config.json", "model.safetensors"]).unwrap();
        assert_eq!(names(&run), ["config.json", "metrics.jsonl", "model.safetensors"]);
        assert_eq!(std::fs::read_to_string(run.join("metrics.jsonl")).unwrap(), "metrics.jsonl");
    }

    #[test]
    fn protected_places_are_refused_even_when_empty() {
        let tmp = tempfile::tempdir().unwrap();
        let save = tmp.path().join("run/checkpoints/step-0000002");
        std::fs::create_dir_all(&save).unwrap();
        for out in [tmp.path().join("run"), tmp.path().join("run/checkpoints"), save.clone()] {
            let err = export_into(&out, &[&save], false, &["config.json"]).unwrap_err().to_string();
            assert!(err.contains("may not replace"), "{err}");
        }
        assert!(export_into(Path::new("/"), &[], false, &[]).unwrap_err().to_string().contains("root directory"));
        let cwd = std::env::current_dir().unwrap();
        for out in [Path::new("."), Path::new("..")] {
            let err = export_into(out, &[], false, &[]).unwrap_err().to_string();
            assert!(err.contains("working directory"), "{out:?}: {err}");
        }
        assert_eq!(std::env::current_dir().unwrap(), cwd);
    }

    #[test]
    fn a_failed_export_leaves_the_previous_one_and_no_staging() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("export");
        export_into(&out, &[], false, &["config.json"]).unwrap();
        let dir = OutDir::create(&out, &[], false).unwrap();
        write(dir.path(), &["model.safetensors"]);
        drop(dir);
        assert_eq!(names(tmp.path()), ["export"]);
        assert_eq!(names(&out), ["config.json"]);
    }
}
