//! The output directory belongs to one run at a time. A lock file (`shard-train.lock`: host and
//! pid) keeps a second job out while the first lives (a zombie holds nothing); a run without `--resume` refuses a
//! directory that holds another run's saves or metrics (it would rotate them out, and a later
//! `--resume latest` would mix the two), unless `--overwrite` clears them first. The
//! checkpoints directory is checked for writing here, before anything is loaded.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use shard_checkpoint::saves;

use crate::config::run_config::RunConfig;
use crate::saves::save::checkpoints_root;

const LOCK: &str = "shard-train.lock";
/// What a run leaves in output.dir besides the checkpoints (the data cache is reused by any run).
const RUN_FILES: [&str; 4] = ["metrics.jsonl", "summary.json", "final", "tb"];

/// Held by rank 0 for the run; removes the lock file when dropped.
pub struct OutputLock {
    path: PathBuf,
}

impl Drop for OutputLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Rank 0's claim on output.dir: the lock, then the guard against another run's files, then a
/// write probe of the checkpoints directory.
pub fn claim(run: &RunConfig, resume: bool, overwrite: bool) -> Result<OutputLock> {
    let dir = &run.output.dir;
    std::fs::create_dir_all(dir).with_context(|| format!("output.dir = {}: cannot create it", dir.display()))?;
    let lock = take_lock(dir)?;
    let root = checkpoints_root(run);
    let others = other_runs_files(run, resume, overwrite)?;
    if !others.is_empty() {
        let names: Vec<String> = others.iter().map(|p| p.display().to_string()).collect();
        for path in &others {
            let removed = if path.is_dir() { std::fs::remove_dir_all(path) } else { std::fs::remove_file(path) };
            removed.with_context(|| format!("--overwrite: cannot remove {}", path.display()))?;
        }
        println!("--overwrite: removed {}", names.join(", "));
    }
    probe_writable(&root)?;
    Ok(lock)
}

/// The files of another run in output.dir that a new run (not `resume`) would mix with its own:
/// none when resuming, an error unless `overwrite` (which deletes them). Reads only, so that the
/// refusal can come before the plan.
pub fn other_runs_files(run: &RunConfig, resume: bool, overwrite: bool) -> Result<Vec<PathBuf>> {
    let dir = &run.output.dir;
    let root = checkpoints_root(run);
    let others: Vec<PathBuf> =
        RUN_FILES.iter().map(|f| dir.join(f)).filter(|p| p.exists()).chain(saves::any_saves(&root).then(|| root.clone())).collect();
    if resume || others.is_empty() {
        return Ok(Vec::new());
    }
    if !overwrite {
        let names: Vec<String> = others.iter().map(|p| p.display().to_string()).collect();
        bail!(
            "output.dir = {} holds another run's files ({}): continue that run with --resume latest, pick another output.dir, or pass --overwrite to delete them",
            dir.display(),
            names.join(", ")
        );
    }
    Ok(others)
}

/// Creates the lock file, or takes over one whose process is gone from this host.
fn take_lock(dir: &Path) -> Result<OutputLock> {
    let path = dir.join(LOCK);
    let host = crate::system::topology::this_host();
    for _ in 0..2 {
        match std::fs::OpenOptions::new().write(true).create_new(true).open(&path) {
            Ok(mut file) => {
                writeln!(file, "{host} {}", std::process::id()).with_context(|| format!("cannot write {}", path.display()))?;
                return Ok(OutputLock { path });
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let holder = std::fs::read_to_string(&path).unwrap_or_default();
                let (their_host, pid) = holder.trim().split_once(' ').unwrap_or(("?", "?"));
                let alive_here = their_host == host && pid.parse::<u32>().is_ok_and(shard_checkpoint::pid::is_running);
                if alive_here || their_host != host {
                    bail!(
                        "output.dir = {} is in use by another job (host {their_host}, pid {pid}, in {}): wait for it to end or use another output.dir{}",
                        dir.display(),
                        path.display(),
                        if their_host != host { "; if that job is gone, delete the lock file" } else { "" }
                    );
                }
                eprintln!("warning: {} was left by pid {pid}, which is gone; taking it over", path.display());
                std::fs::remove_file(&path).with_context(|| format!("cannot remove the stale lock {}", path.display()))?;
            }
            Err(e) => return Err(e).with_context(|| format!("output.dir = {}: cannot create {LOCK} in it", dir.display())),
        }
    }
    bail!("{} keeps reappearing: another job is starting in output.dir = {}", path.display(), dir.display())
}

/// Saves go to `root`: find out now, not at the first save, that they cannot.
fn probe_writable(root: &Path) -> Result<()> {
    let probe = root.join(format!(".write-probe-{}", std::process::id()));
    std::fs::create_dir_all(root)
        .and_then(|()| std::fs::write(&probe, b""))
        .and_then(|()| std::fs::remove_file(&probe))
        .with_context(|| format!("cannot write to {} (where the run saves its checkpoints)", root.display()))
}
