//! Writing a Hugging Face checkpoint directory tensor by tensor: one `model.safetensors`, or, when
//! the model is larger than the shard size, `model-0000i-of-0000n.safetensors` files with a
//! `model.safetensors.index.json` as `save_pretrained` writes them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::{CheckpointError, SafetensorsWriter, TensorHeader};

/// HF's default `max_shard_size`.
pub const DEFAULT_MAX_SHARD_BYTES: usize = 5_000_000_000;

/// Streams tensors, in the order given to [`HfExport::create`], into a sharded HF checkpoint.
pub struct HfExport {
    dir: PathBuf,
    /// File names, and the tensors of each, in write order.
    plan: Vec<(String, Vec<TensorHeader>)>,
    next_file: usize,
    current: Option<(SafetensorsWriter, usize)>,
}

impl HfExport {
    /// Plans the files: tensors are packed in order into files of at most `max_shard_bytes` (a
    /// tensor larger than that gets a file of its own).
    pub fn create(dir: &Path, tensors: Vec<TensorHeader>, max_shard_bytes: usize) -> Result<Self, CheckpointError> {
        std::fs::create_dir_all(dir).map_err(|source| CheckpointError::Io { path: dir.to_owned(), source })?;
        let mut groups: Vec<Vec<TensorHeader>> = vec![Vec::new()];
        let mut size = 0;
        for t in tensors {
            let last = groups.last_mut().expect("never empty");
            if !last.is_empty() && size + t.bytes() > max_shard_bytes {
                groups.push(Vec::new());
                size = 0;
            }
            size += t.bytes();
            groups.last_mut().expect("never empty").push(t);
        }
        let n = groups.len();
        let plan = groups
            .into_iter()
            .enumerate()
            .map(|(i, g)| {
                let name = if n == 1 { "model.safetensors".to_owned() } else { format!("model-{:05}-of-{n:05}.safetensors", i + 1) };
                (name, g)
            })
            .collect();
        Ok(Self { dir: dir.to_owned(), plan, next_file: 0, current: None })
    }

    /// Writes the next tensor in plan order.
    pub fn write(&mut self, name: &str, values: &[f32]) -> Result<(), CheckpointError> {
        self.current_file()?.write(name, values)?;
        self.tensor_written()
    }

    /// Writes the next tensor in plan order, declared U8, as the bytes given.
    pub fn write_bytes(&mut self, name: &str, bytes: &[u8]) -> Result<(), CheckpointError> {
        self.current_file()?.write_bytes(name, bytes)?;
        self.tensor_written()
    }

    /// The file the next tensor goes to, opened when it is the first one of its file.
    fn current_file(&mut self) -> Result<&mut SafetensorsWriter, CheckpointError> {
        if self.current.is_none() {
            let (file, tensors) = &self.plan[self.next_file];
            let metadata = BTreeMap::from([("format".to_owned(), "pt".to_owned())]);
            let writer = SafetensorsWriter::create(&self.dir.join(file), tensors.clone(), &metadata)?;
            self.current = Some((writer, tensors.len()));
            self.next_file += 1;
        }
        Ok(&mut self.current.as_mut().expect("opened above").0)
    }

    /// Counts a written tensor; closes its file after the file's last one.
    fn tensor_written(&mut self) -> Result<(), CheckpointError> {
        let (_, left) = self.current.as_mut().expect("a file is open while writing");
        *left -= 1;
        if *left == 0 {
            let (writer, _) = self.current.take().expect("present");
            writer.finish()?;
        }
        Ok(())
    }

    /// Checks that every tensor was written and writes the index when there are several files.
    pub fn finish(self) -> Result<(), CheckpointError> {
        assert!(self.current.is_none() && self.next_file == self.plan.len(), "export finished before every tensor was written");
        if self.plan.len() == 1 {
            return Ok(());
        }
        let total: usize = self.plan.iter().flat_map(|(_, ts)| ts).map(TensorHeader::bytes).sum();
        let weight_map: BTreeMap<&str, &str> =
            self.plan.iter().flat_map(|(f, ts)| ts.iter().map(move |t| (t.name.as_str(), f.as_str()))).collect();
        let index = serde_json::json!({ "metadata": { "total_size": total }, "weight_map": weight_map });
        let path = self.dir.join("model.safetensors.index.json");
        std::fs::write(&path, serde_json::to_string_pretty(&index).expect("json")).map_err(|source| CheckpointError::Io { path, source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DiskDtype, HfCheckpoint};

    #[test]
    fn shards_when_over_the_limit_and_reads_back() {
        let dir = std::env::temp_dir().join(format!("hf-export-{}", std::process::id()));
        let tensors: Vec<TensorHeader> =
            (0..3).map(|i| TensorHeader { name: format!("t{i}"), dtype: DiskDtype::F32, shape: vec![4] }).collect();
        let mut export = HfExport::create(&dir, tensors, 32).unwrap();
        for i in 0..3 {
            export.write(&format!("t{i}"), &[i as f32; 4]).unwrap();
        }
        export.finish().unwrap();
        assert!(dir.join("model-00002-of-00002.safetensors").exists());
        let ckpt = HfCheckpoint::open(&dir).unwrap();
        assert_eq!(ckpt.read_f32("t2").unwrap(), vec![2.0; 4]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
