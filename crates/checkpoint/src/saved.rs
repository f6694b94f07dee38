//! Reading a complete save back, at any world size: a flat range of any part is assembled from
//! the rank files that hold it (the flat layout makes resharding a slicing problem). Opening
//! checks that every rank file belongs to the save that train_state.json describes; the rank
//! files' checksums are checked on request (reading them whole), a file at a time.

use std::ops::Range;
use std::path::{Path, PathBuf};

use crate::inside::join_inside;
use crate::saves::{SAVE_ID_KEY, STATE_FILE, is_complete};
use crate::st_writer::file_checksum;
use crate::train_state::{FORMAT, ShardKind, rank_pieces, shard_name};
use crate::{CheckpointError, HfCheckpoint, TrainState};

pub struct SavedCheckpoint {
    dir: PathBuf,
    state: TrainState,
    rank_files: Vec<HfCheckpoint>,
}

/// What every reader of a save indexes by: one rank file and one checksum per rank of
/// `world_size`, every trainable part padded to a multiple of it, every parameter inside its part.
/// The reason when one does not hold, naming the key.
fn check_layout(state: &TrainState) -> Result<(), String> {
    let world = state.world_size;
    if world == 0 {
        return Err("`world_size` is 0; a save has at least one rank".into());
    }
    for (key, len) in [("rank_files", state.rank_files.len()), ("rank_checksums", state.rank_checksums.len())] {
        if len != world {
            return Err(format!("`{key}` lists {len} entries, `world_size` is {world}: one per rank was expected"));
        }
    }
    for (u, unit) in state.units.iter().enumerate() {
        for part in unit.parts.iter().filter(|p| p.trainable) {
            let key = format!("units[{u}] ({}) part `{}`", unit.block, part.name);
            if part.padded % world != 0 || part.numel > part.padded {
                let why = format!(
                    "`padded` is {}: it should be a multiple of `world_size` {world} and at least `numel` {}",
                    part.padded, part.numel
                );
                return Err(format!("{key}: {why}"));
            }
            for param in &part.params {
                let numel = param.shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
                if numel.and_then(|n| param.offset.checked_add(n)).is_none_or(|end| end > part.numel) {
                    return Err(format!(
                        "{key}: `{}` of shape {:?} at offset {} overruns the part's `numel` {}",
                        param.name, param.shape, param.offset, part.numel
                    ));
                }
            }
        }
    }
    Ok(())
}

impl SavedCheckpoint {
    /// Opens a complete checkpoint and every rank file in it.
    pub fn open(dir: &Path) -> Result<Self, CheckpointError> {
        if !is_complete(dir) {
            return Err(CheckpointError::Incomplete(dir.to_owned()));
        }
        let path = dir.join(STATE_FILE);
        let text = std::fs::read_to_string(&path).map_err(|source| CheckpointError::Io { path: path.clone(), source })?;
        let state: TrainState =
            serde_json::from_str(&text).map_err(|e| CheckpointError::Corrupt { path: path.clone(), why: e.to_string() })?;
        if state.format != FORMAT {
            return Err(CheckpointError::Corrupt { path, why: format!("format {:?}, this version reads {FORMAT:?}", state.format) });
        }
        check_layout(&state).map_err(|why| CheckpointError::Damaged { path: path.clone(), why })?;
        let rank_files = state
            .rank_files
            .iter()
            .map(|f| HfCheckpoint::open_file(&join_inside(dir, f, &path, "rank_files")?))
            .collect::<Result<_, _>>()?;
        let saved = Self { dir: dir.to_owned(), state, rank_files };
        saved.check_save_ids()?;
        saved.check_rank_files()?;
        Ok(saved)
    }

    /// Checks rank file `rank` against the checksum the save recorded for it.
    pub fn verify_rank_file(&self, rank: usize) -> Result<(), CheckpointError> {
        let path = self.dir.join(&self.state.rank_files[rank]);
        let found = format!("{:016x}", file_checksum(&path)?);
        let recorded = &self.state.rank_checksums[rank];
        if &found != recorded {
            let why = format!("its checksum is {found}, {STATE_FILE} recorded {recorded}: the file changed after the save");
            return Err(CheckpointError::Damaged { path, why });
        }
        Ok(())
    }

    /// Checks every rank file's checksum (see [`Self::verify_rank_file`]).
    pub fn verify_all(&self) -> Result<(), CheckpointError> {
        (0..self.rank_files.len()).try_for_each(|rank| self.verify_rank_file(rank))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn state(&self) -> &TrainState {
        &self.state
    }

    /// Every rank file carries the save id of train_state.json: no file of another save.
    fn check_save_ids(&self) -> Result<(), CheckpointError> {
        for (file, name) in self.rank_files.iter().zip(&self.state.rank_files) {
            let found = file.metadata(SAVE_ID_KEY);
            if found != Some(self.state.save_id.as_str()) {
                let why =
                    format!("it belongs to save {found:?}, {STATE_FILE} to save {:?}: the directory mixes two saves", self.state.save_id);
                return Err(CheckpointError::Damaged { path: self.dir.join(name), why });
            }
        }
        Ok(())
    }

    /// Every rank file holds every trainable part's shards at the saved length.
    fn check_rank_files(&self) -> Result<(), CheckpointError> {
        let world = self.state.world_size;
        for (u, unit) in self.state.units.iter().enumerate() {
            for part in unit.parts.iter().filter(|p| p.trainable) {
                let expected = [part.shard_len(world)];
                let names: Vec<String> = ShardKind::ALL.iter().map(|&k| shard_name(u, &part.name, k)).collect();
                for (rank, file) in self.rank_files.iter().enumerate() {
                    for name in &names {
                        match file.shape(name) {
                            Some(shape) if shape == expected => {}
                            found => {
                                return Err(CheckpointError::Corrupt {
                                    path: self.dir.join(&self.state.rank_files[rank]),
                                    why: format!("`{name}` should have shape {expected:?}, found {found:?}"),
                                });
                            }
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Appends elements `range` of the flat `kind` array of part `part` of unit `unit` to `out`,
    /// reading from whichever rank files hold them.
    pub fn read_flat(
        &self,
        unit: usize,
        part: usize,
        kind: ShardKind,
        range: Range<usize>,
        out: &mut Vec<f32>,
    ) -> Result<(), CheckpointError> {
        let part_state = &self.state.units[unit].parts[part];
        let name = shard_name(unit, &part_state.name, kind);
        for (rank, within, _) in rank_pieces(part_state.shard_len(self.state.world_size), range) {
            self.rank_files[rank].read_f32_range_into(&name, within.start, within.len(), out)?;
        }
        Ok(())
    }

    /// (unit, part, offset) of a parameter of a trainable part, by name.
    pub fn find_param(&self, name: &str) -> Option<(usize, usize, usize)> {
        self.state.units.iter().enumerate().find_map(|(u, unit)| {
            unit.parts
                .iter()
                .enumerate()
                .filter(|(_, p)| p.trainable)
                .find_map(|(p, part)| part.params.iter().find(|q| q.name == name).map(|q| (u, p, q.offset)))
        })
    }
}
