//! Reading a complete save back, at any world size: a flat range of any part is assembled from
//! the rank files that hold it (the flat layout makes resharding a slicing problem).

use std::ops::Range;
use std::path::{Path, PathBuf};

use crate::saves::{STATE_FILE, is_complete};
use crate::train_state::{FORMAT, ShardKind, rank_pieces, shard_name};
use crate::{CheckpointError, HfCheckpoint, TrainState};

pub struct SavedCheckpoint {
    dir: PathBuf,
    state: TrainState,
    rank_files: Vec<HfCheckpoint>,
}

impl SavedCheckpoint {
    /// Opens a complete checkpoint and every rank file in it.
    pub fn open(dir: &Path) -> Result<Self, CheckpointError> {
        if !is_complete(dir) {
            return Err(CheckpointError::Incomplete(dir.to_owned()));
        }
        let path = dir.join(STATE_FILE);
        let text = std::fs::read_to_string(&path).map_err(|source| CheckpointError::Io { path: path.clone(), source })?;
        let state: TrainState = serde_json::from_str(&text).map_err(|e| CheckpointError::Corrupt { path: path.clone(), why: e.to_string() })?;
        if state.format != FORMAT {
            return Err(CheckpointError::Corrupt { path, why: format!("format {:?}, this version reads {FORMAT:?}", state.format) });
        }
        let rank_files = state.rank_files.iter().map(|f| HfCheckpoint::open_file(&dir.join(f))).collect::<Result<_, _>>()?;
        let saved = Self { dir: dir.to_owned(), state, rank_files };
        saved.check_rank_files()?;
        Ok(saved)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn state(&self) -> &TrainState {
        &self.state
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
    pub fn read_flat(&self, unit: usize, part: usize, kind: ShardKind, range: Range<usize>, out: &mut Vec<f32>) -> Result<(), CheckpointError> {
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
            unit.parts.iter().enumerate().filter(|(_, p)| p.trainable).find_map(|(p, part)| {
                part.params.iter().find(|q| q.name == name).map(|q| (u, p, q.offset))
            })
        })
    }
}
