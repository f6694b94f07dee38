//! The check that every rank sees the same output.dir: the dataset cache, the saves and the
//! metrics live there, so on several machines it must be on a shared file system. Rank 0 writes a
//! marker file with a fresh name, every rank looks for it, and a rank that does not see it stops
//! the whole job before anything is loaded.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use burn::tensor::backend::Backend;
use shard_comm::{Collective, ReduceOp};

/// How long a rank keeps looking for rank 0's marker: a network file system may show a new file
/// to other machines a little later.
const PATIENCE: Duration = Duration::from_secs(2);

/// Fails on every rank, naming `dir` and the ranks that cannot see it, unless all ranks see the
/// marker rank 0 writes into `dir`. The marker is removed afterwards.
pub fn check_shared<B: Backend, C: Collective<B>>(dir: &Path, comm: &C) -> Result<()> {
    let world = *comm.world();
    if world.size == 1 {
        return Ok(());
    }
    // Rank 0 picks the marker's name and writes it before the all-reduce tells the others.
    let mut token = [0.0];
    let mut write_error = None;
    if world.is_main() {
        token[0] = fresh_token() as f64;
        write_error = write_marker(dir, token[0] as u64).err();
    }
    comm.all_reduce_scalars(&mut token, ReduceOp::Sum);
    let marker = marker_path(dir, token[0] as u64);
    let missing = comm.all_gather_scalars(&[f64::from(u8::from(write_error.is_some() || !sees(&marker, token[0] as u64)))]);
    if world.is_main() {
        let _ = std::fs::remove_file(&marker); // best effort: a leftover marker is harmless
    }
    if let Some(e) = write_error {
        return Err(e);
    }
    let blind: Vec<usize> = missing.iter().enumerate().filter(|(_, m)| **m > 0.0).map(|(r, _)| r).collect();
    if blind.first() == Some(&0) {
        bail!("output.dir = {}: rank 0 could not write its marker there (its error is above)", dir.display());
    }
    if !blind.is_empty() {
        bail!(
            "output.dir = {} is not shared by the ranks: rank(s) {} of {} do not see the file rank 0 wrote there ({}); \
             put output.dir on a file system every machine mounts (NFS, Lustre, ...)",
            dir.display(),
            ranks_list(&blind),
            world.size,
            marker.display()
        );
    }
    Ok(())
}

fn marker_path(dir: &Path, token: u64) -> PathBuf {
    dir.join(format!(".shard-train-shared-{token:x}"))
}

fn write_marker(dir: &Path, token: u64) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("output.dir = {}: cannot create it", dir.display()))?;
    let marker = marker_path(dir, token);
    std::fs::write(&marker, token.to_string()).with_context(|| format!("output.dir = {}: cannot write {}", dir.display(), marker.display()))
}

/// Whether `marker` holds `token`, looking again for a while.
fn sees(marker: &Path, token: u64) -> bool {
    let started = Instant::now();
    loop {
        if std::fs::read_to_string(marker).is_ok_and(|text| text == token.to_string()) {
            return true;
        }
        if started.elapsed() > PATIENCE {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A name no other job picks at the same time: the clock and the process id, below 2^52 so that
/// it travels exactly as an f64.
fn fresh_token() -> u64 {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    (nanos ^ (u64::from(std::process::id()) << 32)) & ((1 << 52) - 1)
}

/// "1, 3-5, 8": ascending ranks, runs collapsed.
fn ranks_list(ranks: &[usize]) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut i = 0;
    while i < ranks.len() {
        let start = ranks[i];
        while i + 1 < ranks.len() && ranks[i + 1] == ranks[i] + 1 {
            i += 1;
        }
        parts.push(if ranks[i] == start { start.to_string() } else { format!("{start}-{}", ranks[i]) });
        i += 1;
    }
    parts.join(", ")
}

#[cfg(test)]
mod tests {
    #[test]
    fn ranks_list_collapses_runs() {
        assert_eq!(super::ranks_list(&[1, 3, 4, 5, 8]), "1, 3-5, 8");
        assert_eq!(super::ranks_list(&[4, 5, 6, 7]), "4-7");
    }
}
