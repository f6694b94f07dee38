//! Reading a Hugging Face checkpoint directory: `model.safetensors`, or a sharded set with
//! `model.safetensors.index.json`. Files are memory-mapped; a caller reads whole tensors or just
//! an element range of one, so a rank that owns a slice never touches the rest.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::SafeTensors;

use shard_model::ParamSpec;

use crate::inside::join_inside;
use crate::{CheckpointError, DiskDtype};

/// Where one tensor lives.
#[derive(Debug, Clone)]
struct TensorEntry {
    file: usize,
    dtype: DiskDtype,
    shape: Vec<usize>,
    /// Byte offset of the tensor's first element in the file.
    start: usize,
}

/// An opened, validated HF checkpoint.
pub struct HfCheckpoint {
    /// The directory, or the file when a single file was opened: what errors name.
    origin: PathBuf,
    files: Vec<(PathBuf, Mmap)>,
    tensors: BTreeMap<String, TensorEntry>,
    /// The `__metadata__` of the first file (the only one of [`HfCheckpoint::open_file`]).
    metadata: BTreeMap<String, String>,
}

impl HfCheckpoint {
    /// Opens `dir/model.safetensors` or every file named by `dir/model.safetensors.index.json`.
    pub fn open(dir: &Path) -> Result<Self, CheckpointError> {
        let index = dir.join("model.safetensors.index.json");
        let single = dir.join("model.safetensors");
        let file_names: Vec<String> = if index.exists() {
            shard_files_of_index(&index)?
        } else if single.exists() {
            vec!["model.safetensors".into()]
        } else if !dir.is_dir() {
            return Err(CheckpointError::NotADirectory(dir.to_owned()));
        } else {
            return Err(CheckpointError::NoWeights(dir.to_owned()));
        };
        Self::from_files(dir, &file_names, dir)
    }

    /// Opens one safetensors file (not necessarily a model) for reading.
    pub fn open_file(path: &Path) -> Result<Self, CheckpointError> {
        let dir = path.parent().unwrap_or(Path::new("."));
        let name = path.file_name().ok_or_else(|| CheckpointError::NoWeights(path.to_owned()))?;
        Self::from_files(dir, &[name.to_string_lossy().into_owned()], path)
    }

    fn from_files(dir: &Path, file_names: &[String], origin: &Path) -> Result<Self, CheckpointError> {
        let mut files = Vec::new();
        let mut tensors = BTreeMap::new();
        let mut first_metadata = BTreeMap::new();
        for (file_idx, name) in file_names.iter().enumerate() {
            let path = dir.join(name);
            let mmap = map_file(&path)?;
            let (header_len, metadata) =
                SafeTensors::read_metadata(&mmap).map_err(|e| CheckpointError::Corrupt { path: path.clone(), why: e.to_string() })?;
            if file_idx == 0 {
                first_metadata = metadata.metadata().clone().unwrap_or_default().into_iter().collect();
            }
            for (tensor_name, info) in metadata.tensors() {
                let dtype = DiskDtype::from_safetensors(info.dtype).ok_or_else(|| CheckpointError::Corrupt {
                    path: path.clone(),
                    why: format!("tensor `{tensor_name}` has dtype {:?}; only F32, BF16, F16 and U8 are read", info.dtype),
                })?;
                let entry = TensorEntry { file: file_idx, dtype, shape: info.shape.clone(), start: 8 + header_len + info.data_offsets.0 };
                if tensors.insert(tensor_name.clone(), entry).is_some() {
                    return Err(CheckpointError::Corrupt { path, why: format!("tensor `{tensor_name}` appears in two files") });
                }
            }
            files.push((path, mmap));
        }
        Ok(Self { origin: origin.to_owned(), files, tensors, metadata: first_metadata })
    }

    /// A `__metadata__` entry of the first file (the only one of [`Self::open_file`]).
    pub fn metadata(&self, key: &str) -> Option<&str> {
        self.metadata.get(key).map(String::as_str)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    pub fn shape(&self, name: &str) -> Option<&[usize]> {
        self.tensors.get(name).map(|e| e.shape.as_slice())
    }

    pub fn dtype(&self, name: &str) -> Option<DiskDtype> {
        self.tensors.get(name).map(|e| e.dtype)
    }

    /// Checks that the checkpoint holds exactly `expected` (name, shape) pairs; one error lists
    /// every missing, unexpected and mis-shaped tensor.
    pub fn check_tensors<'a>(&self, expected: impl IntoIterator<Item = (&'a str, &'a [usize])>) -> Result<(), CheckpointError> {
        let mut missing = Vec::new();
        let mut misshaped = Vec::new();
        let mut seen = std::collections::BTreeSet::new();
        for (name, shape) in expected {
            seen.insert(name);
            match self.tensors.get(name) {
                None => missing.push(name.to_owned()),
                Some(e) if e.shape != shape => misshaped.push(format!("{name}: expected {shape:?}, found {:?}", e.shape)),
                Some(_) => {}
            }
        }
        let unexpected: Vec<String> = self.tensors.keys().filter(|n| !seen.contains(n.as_str())).cloned().collect();
        if missing.is_empty() && unexpected.is_empty() && misshaped.is_empty() {
            return Ok(());
        }
        Err(CheckpointError::Mismatch { origin: self.origin.clone(), missing, unexpected, misshaped })
    }

    /// Checks that the checkpoint holds exactly the parameters `specs` (see [`Self::check_tensors`]).
    pub fn check_params(&self, specs: &[ParamSpec]) -> Result<(), CheckpointError> {
        self.check_tensors(specs.iter().map(|p| (p.name.as_str(), p.shape.as_slice())))
    }

    /// The whole tensor, flattened, as f32.
    pub fn read_f32(&self, name: &str) -> Result<Vec<f32>, CheckpointError> {
        let numel = self.entry(name)?.shape.iter().product();
        self.read_f32_range(name, 0, numel)
    }

    /// Elements `[start, start + len)` of the flattened tensor, as f32, reading only their bytes.
    pub fn read_f32_range(&self, name: &str, start: usize, len: usize) -> Result<Vec<f32>, CheckpointError> {
        let mut out = Vec::with_capacity(len);
        self.read_f32_range_into(name, start, len, &mut out)?;
        Ok(out)
    }

    /// As [`read_f32_range`](Self::read_f32_range), appending to `out`.
    pub fn read_f32_range_into(&self, name: &str, start: usize, len: usize, out: &mut Vec<f32>) -> Result<(), CheckpointError> {
        let entry = self.entry(name)?;
        let numel: usize = entry.shape.iter().product();
        assert!(start + len <= numel, "range {start}..{} outside `{name}` ({numel} elements)", start + len);
        let size = entry.dtype.size();
        let begin = entry.start + start * size;
        let map = &self.files[entry.file].1;
        // A chunk at a time, so that no more than a chunk of the file is resident at once.
        for chunk in (begin..begin + len * size).step_by(READ_CHUNK_BYTES) {
            let end = (chunk + READ_CHUNK_BYTES).min(begin + len * size);
            entry.dtype.decode_into(&map[chunk..end], out);
            release_pages(map, chunk, end - chunk);
        }
        Ok(())
    }

    /// Bytes `[start, start + len)` of a U8 tensor (bitsandbytes' packed codes and states).
    pub fn read_bytes_range(&self, name: &str, start: usize, len: usize) -> Result<Vec<u8>, CheckpointError> {
        let entry = self.entry(name)?;
        if entry.dtype != DiskDtype::U8 {
            return Err(CheckpointError::WrongDtype {
                origin: self.origin.clone(),
                name: name.into(),
                expected: DiskDtype::U8,
                found: entry.dtype,
            });
        }
        let numel: usize = entry.shape.iter().product();
        assert!(start + len <= numel, "range {start}..{} outside `{name}` ({numel} bytes)", start + len);
        let map = &self.files[entry.file].1;
        let bytes = map[entry.start + start..entry.start + start + len].to_vec();
        release_pages(map, entry.start + start, len);
        Ok(bytes)
    }

    /// The path errors about this checkpoint name.
    pub fn origin(&self) -> &Path {
        &self.origin
    }

    /// A fingerprint of the weights, cheap to take: each file's size and its first and last MiB
    /// (the header with every name, dtype and shape, and the data at both ends) hashed together.
    /// Another checkpoint of the same architecture differs in those bytes; a change in the middle
    /// of a file only is not seen.
    pub fn fingerprint(&self) -> String {
        const SAMPLE: usize = 1 << 20;
        let mut hash = xxhash_rust::xxh3::Xxh3Default::new();
        for (_, map) in &self.files {
            hash.update(&(map.len() as u64).to_le_bytes());
            let head = map.len().min(SAMPLE);
            let tail = map.len().saturating_sub(SAMPLE).max(head);
            hash.update(&map[..head]);
            hash.update(&map[tail..]);
            release_pages(map, 0, head);
            release_pages(map, tail, map.len() - tail);
        }
        format!("{:016x}", hash.digest())
    }

    fn entry(&self, name: &str) -> Result<&TensorEntry, CheckpointError> {
        self.tensors.get(name).ok_or_else(|| CheckpointError::MissingTensor { origin: self.origin.clone(), name: name.into() })
    }
}

/// Bytes decoded between releases of the file's pages (a multiple of every dtype's size).
const READ_CHUNK_BYTES: usize = 16 << 20;

/// Drops the pages of `map[begin..begin + len]` from this process's resident set once they are
/// copied out: they stay in the page cache, and a later read faults them back from it. Without
/// this, every byte ever read from a checkpoint would count in the process's memory.
fn release_pages(map: &Mmap, begin: usize, len: usize) {
    const PAGE: usize = 4096;
    let start = begin / PAGE * PAGE;
    let end = (begin + len).div_ceil(PAGE) * PAGE;
    let end = end.min(map.len().div_ceil(PAGE) * PAGE);
    // SAFETY: the mapping is private and read-only, so discarded pages are re-read from the file
    // on the next access; no data is lost. Failure only leaves the pages resident.
    let _ = unsafe { map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, end - start) };
}

fn map_file(path: &Path) -> Result<Mmap, CheckpointError> {
    let file = File::open(path).map_err(|source| CheckpointError::Io { path: path.to_owned(), source })?;
    // SAFETY: the map is read-only; like every reader of safetensors we assume that nobody
    // truncates the checkpoint while training reads it.
    unsafe { Mmap::map(&file) }.map_err(|source| CheckpointError::Io { path: path.to_owned(), source })
}

/// The distinct file names of an index's `weight_map`, in first-seen order.
fn shard_files_of_index(index: &Path) -> Result<Vec<String>, CheckpointError> {
    let text = std::fs::read_to_string(index).map_err(|source| CheckpointError::Io { path: index.to_owned(), source })?;
    let corrupt = |why: String| CheckpointError::Corrupt { path: index.to_owned(), why };
    let value: serde_json::Value = serde_json::from_str(&text).map_err(|e| corrupt(e.to_string()))?;
    let map = value.get("weight_map").and_then(|m| m.as_object()).ok_or_else(|| corrupt("no `weight_map` object".into()))?;
    let mut files: Vec<String> = Vec::new();
    for (tensor, file) in map {
        let file = file.as_str().ok_or_else(|| corrupt(format!("`weight_map.{tensor}` is not a file name")))?;
        join_inside(index.parent().unwrap_or(Path::new(".")), file, index, &format!("weight_map.{tensor}"))?;
        if !files.iter().any(|f| f == file) {
            files.push(file.to_owned());
        }
    }
    Ok(files)
}
