//! The directory protocol of saves, under `<output.dir>/checkpoints/`:
//!
//! - A save is written into a fresh directory, `.partial-step-NNNNNNN-<save id>/`: one
//!   `rank-RRRRR-of-WWWWW.safetensors` per rank, each carrying the save id in its metadata, then
//!   `train_state.json` (the save id again and every rank file's checksum) and the marker
//!   `COMPLETE`. Its rename to `step-NNNNNNN/` is the commit point: a step directory only ever
//!   holds one whole save. A step directory already there is moved aside first and removed after.
//! - `latest` names this run's newest complete save, a directory beside it (a name that leads out
//!   of `checkpoints/`, such as another run's save, is refused); it is replaced by an atomic rename.
//! - A resume makes the save it starts from the newest of its lineage at once: `latest` names it,
//!   then the saves of later steps (left by the run that went on from it) are renamed
//!   `abandoned-step-NNNNNNN-<time>`: kept whole, never taken by `latest`, never pruned.
//! - Older complete checkpoints beyond `keep_last` are removed only once a newer one is complete,
//!   each one's COMPLETE marker first: a kill part-way leaves an incomplete save (removed at the
//!   next save or resume), never one marked complete without its files. Saves of later steps than
//!   the one just made are neither counted nor removed.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::inside::join_inside;
use crate::{CheckpointError, SavedCheckpoint, TrainState};

pub const MARKER: &str = "COMPLETE";
pub const STATE_FILE: &str = "train_state.json";
/// The metadata key under which every rank file carries its save's id.
pub const SAVE_ID_KEY: &str = "save_id";
const LATEST: &str = "latest";
/// Prefixes of the work directories of saves in progress and of replaced saves.
const PARTIAL: &str = ".partial-";
const REPLACED: &str = ".replaced-";
/// The prefix of the saves of a continuation that a resume of an earlier save abandoned.
const ABANDONED: &str = "abandoned-";

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CheckpointError + '_ {
    move |source| CheckpointError::Io { path: path.to_owned(), source }
}

/// `<root>/step-NNNNNNN`
pub fn step_dir(root: &Path, step: u64) -> PathBuf {
    root.join(format!("step-{step:07}"))
}

/// Where the save `save_id` of step `step` is written before its commit.
pub fn partial_dir(root: &Path, step: u64, save_id: &str) -> PathBuf {
    root.join(format!("{PARTIAL}step-{step:07}-{save_id}"))
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

/// Rank 0's part of a save, after every rank has synced its file into `partial` (a barrier): the
/// train state, the marker, the rename to the step directory, then `latest`, then the clean-up.
/// Returns the step directory and what it removed, for the log.
pub fn finalize(root: &Path, partial: &Path, state: &TrainState, keep_last: usize) -> Result<(PathBuf, Vec<String>), CheckpointError> {
    let json = serde_json::to_vec_pretty(state).expect("serializable");
    write_durably(&partial.join(STATE_FILE), &json)?;
    write_durably(&partial.join(MARKER), b"")?;
    let dir = step_dir(root, state.step);
    let mut notes = Vec::new();
    let replaced = if dir.exists() {
        let aside = root.join(format!("{REPLACED}step-{:07}-{}", state.step, state.save_id));
        std::fs::rename(&dir, &aside).map_err(io(&dir))?;
        Some(aside)
    } else {
        None
    };
    std::fs::rename(partial, &dir).map_err(io(partial))?;
    sync_dir(root)?;
    if let Some(aside) = replaced {
        std::fs::remove_dir_all(&aside).map_err(io(&aside))?;
        notes.push(format!("replaced {} (a save of the run this one was resumed away from)", dir.display()));
    }
    let name = dir.file_name().expect("step-N").to_string_lossy();
    write_durably(&root.join(LATEST), format!("{name}\n").as_bytes())?;
    notes.extend(prune(root, keep_last, state.step)?);
    Ok((dir, notes))
}

/// Whether `dir` is a complete checkpoint.
pub fn is_complete(dir: &Path) -> bool {
    dir.join(MARKER).is_file()
}

/// The step of a step directory's name (`step-NNNNNNN`).
fn step_of(dir: &Path) -> Option<u64> {
    dir.file_name()?.to_str()?.strip_prefix("step-")?.parse().ok()
}

/// Directories under `root`, sorted by name.
fn dirs_in(root: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(root) else { return Vec::new() };
    let mut dirs: Vec<PathBuf> = entries.filter_map(Result::ok).map(|e| e.path()).filter(|p| p.is_dir()).collect();
    dirs.sort();
    dirs
}

/// Step directories under `root`, oldest first.
fn step_dirs(root: &Path) -> Vec<PathBuf> {
    dirs_in(root).into_iter().filter(|d| step_of(d).is_some()).collect()
}

/// Whether `dir`'s name starts with one of `prefixes`.
fn named_with(dir: &Path, prefixes: &[&str]) -> bool {
    dir.file_name().and_then(|n| n.to_str()).is_some_and(|n| prefixes.iter().any(|p| n.starts_with(p)))
}

/// Work directories of saves that did not finish, and saves left aside by one that did not.
fn work_dirs(root: &Path) -> Vec<PathBuf> {
    dirs_in(root).into_iter().filter(|d| named_with(d, &[PARTIAL, REPLACED])).collect()
}

/// Removes a save, its COMPLETE marker first: a kill part-way (remove_dir_all goes in directory
/// order, on ext4 train_state.json before COMPLETE) leaves an incomplete save, never one marked
/// complete without its files.
fn remove(dir: &Path, why: &str, removed: &mut Vec<String>) -> Result<(), CheckpointError> {
    let marker = dir.join(MARKER);
    if marker.exists() {
        std::fs::remove_file(&marker).map_err(io(&marker))?;
        sync_dir(dir)?;
        die_in_prune_for_tests();
    }
    std::fs::remove_dir_all(dir).map_err(io(dir))?;
    removed.push(format!("removed {why} {}", dir.display()));
    Ok(())
}

/// Removes complete checkpoints beyond the newest `keep_last` (0 keeps all) up to step `newest`
/// (the save just made), every incomplete one older than it (a save that died, in the layout of
/// format 1), and the work directories of saves that did not finish.
pub fn prune(root: &Path, keep_last: usize, newest: u64) -> Result<Vec<String>, CheckpointError> {
    let dirs: Vec<PathBuf> = step_dirs(root).into_iter().filter(|d| step_of(d).is_some_and(|s| s <= newest)).collect();
    let (complete, incomplete): (Vec<&PathBuf>, Vec<&PathBuf>) = dirs.iter().partition(|d| is_complete(d));
    let mut removed = Vec::new();
    let old_complete = if keep_last == 0 { 0 } else { complete.len().saturating_sub(keep_last) };
    for dir in &complete[..old_complete] {
        remove(dir, "old checkpoint", &mut removed)?;
    }
    for dir in incomplete.into_iter().filter(|d| step_of(d) < Some(newest)) {
        remove(dir, "incomplete checkpoint (a save that did not finish)", &mut removed)?;
    }
    for dir in work_dirs(root) {
        remove(&dir, "incomplete checkpoint (a save that did not finish)", &mut removed)?;
    }
    Ok(removed)
}

/// Removes every incomplete save (saves that did not finish), for a resume that has found the
/// complete checkpoint it starts from. Returns what it removed, for the log.
pub fn remove_incomplete(root: &Path) -> Result<Vec<String>, CheckpointError> {
    let mut removed = Vec::new();
    for dir in step_dirs(root).into_iter().filter(|d| !is_complete(d)).chain(work_dirs(root)) {
        remove(&dir, "incomplete checkpoint (a save that did not finish)", &mut removed)?;
    }
    Ok(removed)
}

/// `SHARD_TRAIN_TEST_DIE_IN_PRUNE`: the process aborts once the removal of an old save has begun,
/// so that a test can see what a kill there leaves.
fn die_in_prune_for_tests() {
    if std::env::var_os("SHARD_TRAIN_TEST_DIE_IN_PRUNE").is_some() {
        std::process::abort();
    }
}

/// Whether `root` holds any save, complete or not (a new run must not mix its saves with them).
pub fn any_saves(root: &Path) -> bool {
    dirs_in(root).iter().any(|d| step_of(d).is_some() || named_with(d, &[PARTIAL, REPLACED, ABANDONED])) || root.join(LATEST).exists()
}

/// Makes `resumed`, the save of step `step` that a run resumes from, the newest of its lineage at
/// once: `latest` names it (when it lies in `root`), then the saves of later steps, left by the run
/// that went on from it, are renamed `abandoned-step-NNNNNNN-<time>`. Returns what it renamed, for
/// the log.
pub fn adopt(root: &Path, resumed: &Path, step: u64) -> Result<Vec<String>, CheckpointError> {
    if let Some(name) = name_under(root, resumed) {
        write_durably(&root.join(LATEST), format!("{name}\n").as_bytes())?;
    }
    let time = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let mut notes = Vec::new();
    for dir in step_dirs(root).into_iter().filter(|d| step_of(d).is_some_and(|s| s > step)) {
        let name = dir.file_name().expect("step-N").to_string_lossy();
        let kept = root.join(format!("{ABANDONED}{name}-{time:x}"));
        std::fs::rename(&dir, &kept).map_err(io(&dir))?;
        notes.push(format!("kept {} of the run resumed away from as {}", dir.display(), kept.display()));
    }
    if !notes.is_empty() {
        sync_dir(root)?;
    }
    Ok(notes)
}

/// `dir`'s name when it lies right under `root`.
fn name_under(root: &Path, dir: &Path) -> Option<String> {
    let parent = dir.parent()?.canonicalize().ok()?;
    (parent == root.canonicalize().ok()?).then(|| dir.file_name()).flatten().map(|n| n.to_string_lossy().into_owned())
}

/// The save `latest` names, if it names one; a name that leads out of `root` is refused.
fn named_by_latest(root: &Path) -> Result<Option<PathBuf>, CheckpointError> {
    let path = root.join(LATEST);
    match std::fs::read_to_string(&path) {
        Ok(name) if !name.trim().is_empty() => join_inside(root, name.trim(), &path, LATEST).map(Some),
        _ => Ok(None),
    }
}

/// The newest complete checkpoint of an earlier step than `dir`'s.
fn previous_complete(root: &Path, dir: &Path) -> Option<PathBuf> {
    let before = step_of(dir)?;
    step_dirs(root).into_iter().rev().find(|d| step_of(d).is_some_and(|s| s < before) && is_complete(d))
}

/// The checkpoint `spec` names: `latest` (under `root`), or a directory. `latest` falls back to
/// the newest complete checkpoint when the one it names is incomplete or gone; the second value
/// says so, for the log. A `latest` naming a save outside `root` is an error.
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
    let named = named_by_latest(root)?;
    if let Some(dir) = named.as_ref().filter(|d| is_complete(d)) {
        return Ok((dir.clone(), None));
    }
    let newest = match &named {
        Some(n) if step_of(n).is_some() => previous_complete(root, n),
        _ => step_dirs(root).into_iter().rev().find(|d| is_complete(d)),
    };
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

/// The save `spec` names (see [`resolve`]), opened and then checked by `check`: the rank files'
/// checksums, which the caller may share out among ranks (every rank must then get the same
/// answer). From `latest`, a damaged save is skipped for the previous complete one, each skip a
/// warning in the second value; a directory named directly must be sound.
pub fn open_checked(
    root: &Path,
    spec: &Path,
    mut check: impl FnMut(&SavedCheckpoint) -> Result<(), CheckpointError>,
) -> Result<(SavedCheckpoint, Vec<String>), CheckpointError> {
    let (mut dir, fallback) = resolve(root, spec)?;
    let mut warnings: Vec<String> = fallback.into_iter().collect();
    loop {
        match SavedCheckpoint::open(&dir).and_then(|saved| check(&saved).map(|()| saved)) {
            Ok(saved) => return Ok((saved, warnings)),
            Err(e) if spec == Path::new(LATEST) => {
                let Some(previous) = previous_complete(root, &dir) else { return Err(e) };
                warnings.push(format!("{e}; resuming from {} instead", previous.display()));
                dir = previous;
            }
            Err(e) => return Err(e),
        }
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
        let work = partial_dir(root, 5, "abc");
        std::fs::create_dir_all(&work).unwrap();
        let removed = prune(root, 2, 4).unwrap();
        assert_eq!(removed.len(), 3, "{removed:?}");
        assert!(!step_dir(root, 1).exists() && !partial.exists() && !work.exists());
        assert!(step_dir(root, 2).exists() && step_dir(root, 4).exists());
    }

    #[test]
    fn saves_of_later_steps_are_neither_counted_nor_pruned() {
        // After a rollback to step 1, this run's save of step 2 is its newest: the abandoned run's
        // steps 3 and 4 stay, and do not push out steps 1 and 2.
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        for step in 1..=4 {
            make(root, step, true);
        }
        assert!(prune(root, 2, 2).unwrap().is_empty());
        assert!((1..=4).all(|s| step_dir(root, s).exists()));
    }

    #[test]
    fn a_resume_of_an_earlier_save_makes_it_latest_and_keeps_the_later_ones_aside() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        for step in 1..=4 {
            make(root, step, true);
        }
        std::fs::write(root.join(LATEST), "step-0000004\n").unwrap();
        assert_eq!(adopt(root, &step_dir(root, 2), 2).unwrap().len(), 2);
        assert_eq!(std::fs::read_to_string(root.join(LATEST)).unwrap(), "step-0000002\n");
        let abandoned = || dirs_in(root).into_iter().filter(|d| named_with(d, &[ABANDONED])).collect::<Vec<_>>();
        assert_eq!(abandoned().len(), 2);
        assert!(abandoned().iter().all(|d| is_complete(d)), "kept whole");
        assert!(!step_dir(root, 3).exists() && !step_dir(root, 4).exists());
        // latest's fall-back and pruning never see them.
        std::fs::write(root.join(LATEST), "step-0000003\n").unwrap();
        assert_eq!(resolve(root, Path::new("latest")).unwrap().0, step_dir(root, 2));
        prune(root, 1, 2).unwrap();
        assert_eq!(abandoned().len(), 2);
    }

    #[test]
    fn latest_naming_a_save_outside_its_directory_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let (root, other) = (tmp.path().join("run"), tmp.path().join("other"));
        make(&root, 1, true);
        make(&other, 1, true);
        for name in ["../other/step-0000001".to_owned(), step_dir(&other, 1).display().to_string()] {
            std::fs::write(root.join(LATEST), &name).unwrap();
            let err = resolve(&root, Path::new("latest")).unwrap_err();
            assert!(matches!(err, CheckpointError::Outside { .. }), "{name}: {err}");
        }
    }

    #[test]
    fn latest_names_a_damaged_save_the_previous_complete_one_is_taken() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        make(root, 1, true);
        make(root, 3, true);
        make(root, 2, false);
        std::fs::write(root.join(LATEST), "step-0000002\n").unwrap();
        // Not step 3 (of a run abandoned at an earlier rollback): the one before the named one.
        assert_eq!(resolve(root, Path::new("latest")).unwrap().0, step_dir(root, 1));
    }
}
