//! Writing safetensors files tensor by tensor, so that a writer never holds more than the tensor
//! it is writing. The header is known up front (names, dtypes and shapes), so it is written first
//! and the data streams after it. Files are written under a temporary name, synced and renamed:
//! a reader never sees a half-written file under the final name. The writer hashes every byte it
//! writes (xxh3-64), so that a save can record a checksum of each file without reading it back.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use xxhash_rust::xxh3::Xxh3Default;

use crate::{CheckpointError, DiskDtype};

/// Elements encoded at once.
const ENCODE_CHUNK: usize = 1 << 18;

/// A tensor to be written: name, dtype on disk and shape.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorHeader {
    pub name: String,
    pub dtype: DiskDtype,
    pub shape: Vec<usize>,
}

impl TensorHeader {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn bytes(&self) -> usize {
        self.numel() * self.dtype.size()
    }
}

/// One safetensors file being written; tensors must arrive in the order they were declared.
pub struct SafetensorsWriter {
    path: PathBuf,
    tmp_path: PathBuf,
    out: BufWriter<File>,
    tensors: Vec<TensorHeader>,
    written: usize,
    scratch: Vec<u8>,
    checksum: Xxh3Default,
}

impl SafetensorsWriter {
    pub fn create(path: &Path, tensors: Vec<TensorHeader>, metadata: &BTreeMap<String, String>) -> Result<Self, CheckpointError> {
        let tmp_path = path.with_extension("safetensors.tmp");
        let io = |source| CheckpointError::Io { path: tmp_path.clone(), source };
        let mut out = BufWriter::with_capacity(1 << 20, File::create(&tmp_path).map_err(io)?);
        let header = header_bytes(&tensors, metadata);
        out.write_all(&header).map_err(io)?;
        let mut checksum = Xxh3Default::new();
        checksum.update(&header);
        Ok(Self { path: path.to_owned(), tmp_path, out, tensors, written: 0, scratch: Vec::new(), checksum })
    }

    /// Writes the next tensor (f32 values, converted to its declared dtype).
    pub fn write(&mut self, name: &str, values: &[f32]) -> Result<(), CheckpointError> {
        let dtype = self.next(name, values.len()).dtype;
        // Encoded a chunk at a time, so that writing never holds a second copy of the tensor.
        for chunk in values.chunks(ENCODE_CHUNK) {
            self.scratch.clear();
            dtype.encode_into(chunk, &mut self.scratch);
            self.checksum.update(&self.scratch);
            self.out.write_all(&self.scratch).map_err(|source| CheckpointError::Io { path: self.tmp_path.clone(), source })?;
        }
        self.written += 1;
        Ok(())
    }

    /// Writes the next tensor, declared U8, as the bytes given.
    pub fn write_bytes(&mut self, name: &str, bytes: &[u8]) -> Result<(), CheckpointError> {
        let dtype = self.next(name, bytes.len()).dtype;
        assert_eq!(dtype, DiskDtype::U8, "{}: `{name}` is declared {dtype}, not written as bytes", self.path.display());
        self.checksum.update(bytes);
        self.out.write_all(bytes).map_err(|source| CheckpointError::Io { path: self.tmp_path.clone(), source })?;
        self.written += 1;
        Ok(())
    }

    /// The header of the next tensor, checked against what the caller is writing.
    fn next(&self, name: &str, numel: usize) -> &TensorHeader {
        let expected =
            self.tensors.get(self.written).unwrap_or_else(|| panic!("{}: no tensor left to write, got `{name}`", self.path.display()));
        assert_eq!(expected.name, name, "{}: tensors must be written in declared order", self.path.display());
        assert_eq!(expected.numel(), numel, "{}: `{name}` has the wrong number of elements", self.path.display());
        expected
    }

    /// Flushes, syncs and moves the file to its final name; returns the xxh3-64 of its bytes (see
    /// [`file_checksum`]).
    pub fn finish(self) -> Result<u64, CheckpointError> {
        assert_eq!(self.written, self.tensors.len(), "{}: not every tensor was written", self.path.display());
        let io = |source| CheckpointError::Io { path: self.tmp_path.clone(), source };
        let file = self.out.into_inner().map_err(|e| io(e.into_error()))?;
        file.sync_all().map_err(io)?;
        std::fs::rename(&self.tmp_path, &self.path).map_err(io)?;
        Ok(self.checksum.digest())
    }
}

/// The xxh3-64 of a file's bytes, read a buffer at a time (what [`SafetensorsWriter::finish`]
/// returned for it, unless the file changed since).
pub fn file_checksum(path: &Path) -> Result<u64, CheckpointError> {
    use std::io::Read;
    let io = |source| CheckpointError::Io { path: path.to_owned(), source };
    let mut file = File::open(path).map_err(io)?;
    let mut checksum = Xxh3Default::new();
    let mut buffer = vec![0u8; 8 << 20];
    loop {
        match file.read(&mut buffer).map_err(io)? {
            0 => return Ok(checksum.digest()),
            n => checksum.update(&buffer[..n]),
        }
    }
}

/// The 8-byte length, then the JSON header padded with spaces to a multiple of 8 bytes.
fn header_bytes(tensors: &[TensorHeader], metadata: &BTreeMap<String, String>) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    if !metadata.is_empty() {
        header.insert("__metadata__".into(), serde_json::to_value(metadata).expect("strings"));
    }
    let mut offset = 0;
    for t in tensors {
        let end = offset + t.bytes();
        header
            .insert(t.name.clone(), serde_json::json!({ "dtype": t.dtype.header_name(), "shape": t.shape, "data_offsets": [offset, end] }));
        offset = end;
    }
    let mut json = serde_json::to_vec(&header).expect("serializable");
    json.resize(json.len().div_ceil(8) * 8, b' ');
    let mut bytes = (json.len() as u64).to_le_bytes().to_vec();
    bytes.extend(json);
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::HfCheckpoint;

    #[test]
    fn written_file_reads_back() {
        let dir = std::env::temp_dir().join(format!("st-writer-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let tensors = vec![
            TensorHeader { name: "b".into(), dtype: DiskDtype::F32, shape: vec![2, 3] },
            TensorHeader { name: "a".into(), dtype: DiskDtype::BF16, shape: vec![3] },
        ];
        let mut w = SafetensorsWriter::create(&dir.join("model.safetensors"), tensors, &BTreeMap::new()).unwrap();
        w.write("b", &[1., 2., 3., 4., 5., 6.]).unwrap();
        w.write("a", &[0.5, 1.5, -2.0]).unwrap();
        let checksum = w.finish().unwrap();
        assert_eq!(checksum, file_checksum(&dir.join("model.safetensors")).unwrap());
        let ckpt = HfCheckpoint::open(&dir).unwrap();
        assert_eq!(ckpt.read_f32("b").unwrap(), vec![1., 2., 3., 4., 5., 6.]);
        assert_eq!(ckpt.read_f32_range("b", 2, 3).unwrap(), vec![3., 4., 5.]);
        assert_eq!(ckpt.read_f32("a").unwrap(), vec![0.5, 1.5, -2.0]);
        assert_eq!(ckpt.dtype("a"), Some(DiskDtype::BF16));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
