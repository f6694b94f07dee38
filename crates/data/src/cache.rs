//! The dataset cache, `<output.dir>/data/`, built once by one process and memory-mapped by all:
//! - `tokens.u32`: every example's tokens one after the other (little-endian), bit 31 set on the
//!   tokens that carry no loss;
//! - `index.u64`: where each example starts, then where the last one ends;
//! - `manifest.json`: what they were made from (the source's content hash, the tokenizer's, the
//!   settings) and the counts.
//!
//! A cache is reused while the manifest matches: the source's size and mtime, or failing those its
//! content hash. Files are written under temporary names and renamed into place, the manifest last
//! and only after the old one is gone, so that a crash never leaves a cache that looks valid; a
//! build removes the temporary files of builds that died (their process is gone), and stops
//! between chunks when asked to (a signal during start-up), removing its own.

use std::fmt;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use memmap2::Mmap;
use serde::{Deserialize, Serialize};

use crate::build::{RowRules, tokenize};
use crate::format::{Fields, LineEncoder, TemplateSource};
use crate::{DataError, DataSpec, Format, OnBadExample, Specials, TextTokenizer};

/// Set on a token that carries no loss.
pub(crate) const NO_LOSS: u32 = 1 << 31;

pub(crate) fn token_with_mask(id: u32, loss: bool) -> u32 {
    if loss { id } else { id | NO_LOSS }
}

const TOKENS: &str = "tokens.u32";
const INDEX: &str = "index.u64";
const MANIFEST: &str = "manifest.json";
/// Changes whenever the files, or the way examples are made, change.
const VERSION: u32 = 2;
/// The grain of the parallel tokenization.
const CHUNK_BYTES: usize = 1 << 20;

/// The counts of a build.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CacheStats {
    pub examples: u64,
    /// Over all examples, EOS separators included when packing.
    pub tokens: u64,
    /// Examples cut to `seq_len`.
    pub truncated: u64,
    /// Bad lines left out (`on_bad_example = "skip"`).
    pub skipped: u64,
    /// Tokens whose label carries loss, EOS separators included.
    pub tokens_with_loss: u64,
    /// The first skipped lines, as `file:line: why`.
    pub first_skipped: Vec<String>,
}

impl fmt::Display for CacheStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}, {}", shard_core::counted(self.examples, "example"), shard_core::counted(self.tokens, "token"))?;
        if self.truncated > 0 {
            write!(f, "; {} truncated to seq_len", self.truncated)?;
        }
        if self.skipped > 0 {
            write!(f, "; bad lines skipped: {}, first: {}", self.skipped, self.first_skipped.join(" | "))?;
        }
        Ok(())
    }
}

/// What [`prepare_cache`] did.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// False when a valid cache was already there.
    pub built: bool,
    pub stats: CacheStats,
}

/// Builds the cache for `spec` in `dir`, unless a valid one is there. Call it in one process
/// (rank 0) while the others wait; then every process calls [`crate::Dataset::open`]. Once `stop`
/// is set, a build in progress ends with [`DataError::Stopped`].
pub fn prepare_cache(spec: &DataSpec, dir: &Path, stop: &AtomicBool) -> Result<Prepared, DataError> {
    let settings = Settings::of(spec)?;
    let (len, modified_ns) = file_stamp(&spec.source)?;
    let reusable = read_manifest(dir)
        .filter(|m| m.version == VERSION && m.settings == settings && m.source.len == len && files_complete(dir, &m.stats));
    if let Some(mut manifest) = reusable {
        if manifest.source.modified_ns == modified_ns {
            return Ok(Prepared { built: false, stats: manifest.stats });
        }
        if content_hash(&map(&spec.source)?) == manifest.source.xxh3_128 {
            manifest.source = SourceFile { path: spec.source.clone(), modified_ns, ..manifest.source };
            write_atomically(&dir.join(MANIFEST), &manifest.to_json())?;
            return Ok(Prepared { built: false, stats: manifest.stats });
        }
    }
    build(spec, settings, (len, modified_ns), dir, stop)
}

/// A cache's files, mapped, after checking that they were made for `spec`.
pub(crate) struct OpenCache {
    pub tokens: Mmap,
    pub index: Mmap,
    pub stats: CacheStats,
}

pub(crate) fn open(spec: &DataSpec, dir: &Path) -> Result<OpenCache, DataError> {
    let stale = |why: String| DataError::Cache {
        path: dir.to_owned(),
        why: format!("{why}; prepare_cache builds it (one process, before the others open it)"),
    };
    let manifest = read_manifest(dir).ok_or_else(|| stale(format!("no valid {MANIFEST}")))?;
    if manifest.version != VERSION {
        return Err(stale(format!("made by format version {}, this is {VERSION}", manifest.version)));
    }
    let settings = Settings::of(spec)?;
    if manifest.settings != settings {
        return Err(stale(format!("made for {:?}, not {:?}", manifest.settings, settings)));
    }
    let (len, modified_ns) = file_stamp(&spec.source)?;
    if (manifest.source.len, manifest.source.modified_ns) != (len, modified_ns) {
        return Err(stale(format!("made from another version of {}", spec.source.display())));
    }
    if !files_complete(dir, &manifest.stats) {
        return Err(stale(format!("{TOKENS} or {INDEX} is missing or of the wrong size")));
    }
    Ok(OpenCache { tokens: map(&dir.join(TOKENS))?, index: map(&dir.join(INDEX))?, stats: manifest.stats })
}

#[derive(Serialize, Deserialize)]
struct Manifest {
    version: u32,
    source: SourceFile,
    settings: Settings,
    stats: CacheStats,
}

impl Manifest {
    fn to_json(&self) -> Vec<u8> {
        let mut text = serde_json::to_vec_pretty(self).expect("a manifest serializes");
        text.push(b'\n');
        text
    }
}

#[derive(Serialize, Deserialize)]
struct SourceFile {
    path: PathBuf,
    len: u64,
    modified_ns: u64,
    xxh3_128: String,
}

/// Everything but the source that decides the cache's content.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Settings {
    format: Format,
    fields: Fields,
    /// The tokenizer's content hash, for the formats that use one.
    tokenizer_xxh3_128: Option<String>,
    /// The chat template's, for the `messages` format with one.
    chat_template_xxh3_128: Option<String>,
    seq_len: usize,
    packing: bool,
    on_bad_example: OnBadExample,
    vocab_size: usize,
    bos_token_id: Option<u32>,
    eos_token_id: Option<u32>,
}

impl Settings {
    fn of(spec: &DataSpec) -> Result<Self, DataError> {
        let tokenizer_xxh3_128 = match (&spec.tokenizer, spec.format.needs_tokenizer()) {
            (Some(path), true) => Some(content_hash(&std::fs::read(path).map_err(DataError::io(path))?)),
            (None, true) => return Err(DataError::Setup(format!("format = \"{}\" needs a tokenizer (data.tokenizer)", spec.format))),
            (_, false) => None,
        };
        let chat_template_xxh3_128 = match spec.format {
            Format::Messages => {
                TemplateSource::find(spec.chat_template.as_deref(), spec.tokenizer.as_deref())?.map(|t| content_hash(t.text.as_bytes()))
            }
            _ => None,
        };
        Ok(Self {
            format: spec.format,
            fields: spec.fields.clone(),
            tokenizer_xxh3_128,
            chat_template_xxh3_128,
            seq_len: spec.seq_len,
            packing: spec.packing,
            on_bad_example: spec.on_bad_example,
            vocab_size: spec.vocab_size,
            bos_token_id: spec.bos_token_id,
            eos_token_id: spec.eos_token_id,
        })
    }
}

/// What turns lines into rows, checked before any line is read (quick, on any rank): the
/// tokenizer, its BOS and EOS against the model's, the field mapping and the chat template.
pub fn check_setup(spec: &DataSpec) -> Result<(), DataError> {
    let tokenizer = load_tokenizer(spec)?;
    let specials = Specials::resolve(spec, tokenizer.as_ref())?;
    LineEncoder::new(spec, tokenizer.as_ref(), specials).map(drop)
}

/// The tokenizer of a format that needs one.
fn load_tokenizer(spec: &DataSpec) -> Result<Option<TextTokenizer>, DataError> {
    match &spec.tokenizer {
        Some(path) if spec.format.needs_tokenizer() => Ok(Some(TextTokenizer::from_file(path)?)),
        _ => Ok(None),
    }
}

fn build(
    spec: &DataSpec,
    settings: Settings,
    (len, modified_ns): (u64, u64),
    dir: &Path,
    stop: &AtomicBool,
) -> Result<Prepared, DataError> {
    std::fs::create_dir_all(dir).map_err(DataError::write(dir))?;
    remove_temp_files_of_dead_builds(dir);
    let bytes = map(&spec.source)?;
    let source = SourceFile { path: spec.source.clone(), len, modified_ns, xxh3_128: content_hash(&bytes) };

    let tokenizer = load_tokenizer(spec)?;
    let specials = Specials::resolve(spec, tokenizer.as_ref())?;
    let encoder = LineEncoder::new(spec, tokenizer.as_ref(), specials)?;
    let rules = RowRules {
        seq_len: spec.seq_len,
        packing_eos: if spec.packing { specials.eos } else { None },
        on_bad_example: spec.on_bad_example,
    };

    let staging = Staging::new(dir);
    let mut tokens_out = Writer::create(&staging.tokens)?;
    let mut index_out = Writer::create(&staging.index)?;
    index_out.write(&0u64.to_le_bytes())?;
    wait_at_test_gate(stop);
    let mut end = 0u64;
    let stats = tokenize(&spec.source, &bytes, &encoder, &rules, CHUNK_BYTES, &mut |rows| {
        if stop.load(Ordering::Relaxed) {
            return Err(DataError::Stopped(dir.to_owned()));
        }
        tokens_out.write(&rows.tokens.iter().flat_map(|t| t.to_le_bytes()).collect::<Vec<u8>>())?;
        let ends: Vec<u8> = rows
            .lengths
            .iter()
            .flat_map(|&n| {
                end += n as u64;
                end.to_le_bytes()
            })
            .collect();
        index_out.write(&ends)
    })?;
    tokens_out.finish()?;
    index_out.finish()?;
    let manifest = Manifest { version: VERSION, source, settings, stats };
    staging.commit(dir, &manifest)?;
    Ok(Prepared { built: true, stats: manifest.stats })
}

/// Removes `NAME.tmp-PID` files whose process no longer runs on this host (a build that was
/// killed). Best effort: a file that cannot be removed is left, and never reused.
fn remove_temp_files_of_dead_builds(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.filter_map(Result::ok) {
        let name = entry.file_name();
        let Some((_, pid)) = name.to_str().and_then(|n| n.rsplit_once(".tmp-")) else { continue };
        let alive = pid.parse::<u32>().is_ok_and(|pid| Path::new("/proc").join(pid.to_string()).exists());
        if !alive {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// `SHARD_TRAIN_TEST_CACHE_BUILD_GATE=PATH`, for the test that signals a job during a cache
/// build: once its temporary files exist, the build writes PATH and waits there until it is asked
/// to stop (or PATH is removed), so that the signal lands in the build without a timing window.
fn wait_at_test_gate(stop: &AtomicBool) {
    let Some(gate) = std::env::var_os("SHARD_TRAIN_TEST_CACHE_BUILD_GATE").map(PathBuf::from) else { return };
    if std::fs::write(&gate, std::process::id().to_string()).is_err() {
        return; // the test then waits for a file that never comes, and fails saying so
    }
    while !stop.load(Ordering::Relaxed) && gate.exists() {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// The data files of a build under temporary names; removed unless committed.
struct Staging {
    tokens: PathBuf,
    index: PathBuf,
    committed: bool,
}

impl Staging {
    fn new(dir: &Path) -> Self {
        let tmp = |name: &str| dir.join(format!("{name}.tmp-{}", std::process::id()));
        Self { tokens: tmp(TOKENS), index: tmp(INDEX), committed: false }
    }

    /// Invalidates the old cache, moves the data files into place, then writes the manifest.
    fn commit(mut self, dir: &Path, manifest: &Manifest) -> Result<(), DataError> {
        let manifest_path = dir.join(MANIFEST);
        match std::fs::remove_file(&manifest_path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(DataError::write(&manifest_path)(e)),
            _ => {}
        }
        for (from, to) in [(&self.tokens, TOKENS), (&self.index, INDEX)] {
            std::fs::rename(from, dir.join(to)).map_err(DataError::write(from))?;
        }
        self.committed = true;
        write_atomically(&manifest_path, &manifest.to_json())
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.tokens);
            let _ = std::fs::remove_file(&self.index);
        }
    }
}

/// A buffered file that names itself in errors and is synced to disk at the end.
struct Writer {
    path: PathBuf,
    out: BufWriter<File>,
}

impl Writer {
    fn create(path: &Path) -> Result<Self, DataError> {
        let file = File::create(path).map_err(DataError::write(path))?;
        Ok(Self { path: path.to_owned(), out: BufWriter::with_capacity(1 << 20, file) })
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), DataError> {
        self.out.write_all(bytes).map_err(DataError::write(&self.path))
    }

    fn finish(self) -> Result<(), DataError> {
        let file = self.out.into_inner().map_err(|e| DataError::write(&self.path)(e.into_error()))?;
        file.sync_all().map_err(DataError::write(&self.path))
    }
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), DataError> {
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    let mut out = Writer::create(&tmp)?;
    out.write(bytes)?;
    out.finish()?;
    std::fs::rename(&tmp, path).map_err(DataError::write(path))
}

fn read_manifest(dir: &Path) -> Option<Manifest> {
    serde_json::from_slice(&std::fs::read(dir.join(MANIFEST)).ok()?).ok()
}

fn files_complete(dir: &Path, stats: &CacheStats) -> bool {
    let len = |name| std::fs::metadata(dir.join(name)).map(|m| m.len()).ok();
    len(TOKENS) == Some(4 * stats.tokens) && len(INDEX) == Some(8 * (stats.examples + 1))
}

/// (size, modification time in ns) of a file.
fn file_stamp(path: &Path) -> Result<(u64, u64), DataError> {
    let meta = std::fs::metadata(path).map_err(DataError::io(path))?;
    let modified = meta.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok());
    Ok((meta.len(), modified.map_or(0, |d| d.as_nanos() as u64)))
}

fn map(path: &Path) -> Result<Mmap, DataError> {
    let file = File::open(path).map_err(DataError::io(path))?;
    // SAFETY: the files are only read. A cache file is never rewritten in place (a rebuild
    // renames new files over it, which leaves existing maps intact); a source file changed while
    // it is being tokenized gives a wrong cache, as reading it would.
    unsafe { Mmap::map(&file) }.map_err(DataError::io(path))
}

fn content_hash(bytes: &[u8]) -> String {
    format!("{:032x}", xxhash_rust::xxh3::xxh3_128(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokenizer::tests::spec;

    fn text_spec(dir: &Path, lines: &str) -> DataSpec {
        let source = dir.join("data.jsonl");
        std::fs::write(&source, lines).unwrap();
        DataSpec { source, seq_len: 16, ..spec(Format::Text) }
    }

    fn cache_files(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        names.sort();
        names
    }

    #[test]
    fn reused_while_source_and_tokenizer_are_unchanged() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = tmp.path().join("run/data");
        let spec = text_spec(tmp.path(), "{\"text\": \"Hello world\"}\n");
        let first = prepare_cache(&spec, &cache, &AtomicBool::new(false)).unwrap();
        assert!(first.built);
        assert_eq!((first.stats.examples, first.stats.tokens), (1, 4));
        assert_eq!(cache_files(&cache), vec![INDEX, MANIFEST, TOKENS]);
        assert!(!prepare_cache(&spec, &cache, &AtomicBool::new(false)).unwrap().built);

        // Same content, new mtime: the content hash says it is the same file.
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&spec.source, "{\"text\": \"Hello world\"}\n").unwrap();
        assert!(!prepare_cache(&spec, &cache, &AtomicBool::new(false)).unwrap().built);
        assert!(open(&spec, &cache).is_ok());

        // Other content, other settings, another tokenizer: rebuilt.
        std::fs::write(&spec.source, "{\"text\": \"Hello world!\"}\n").unwrap();
        assert!(open(&spec, &cache).err().unwrap().to_string().contains("another version of"));
        assert!(prepare_cache(&spec, &cache, &AtomicBool::new(false)).unwrap().built);
        let packed = DataSpec { packing: true, ..spec.clone() };
        assert!(open(&packed, &cache).err().unwrap().to_string().contains("made for"));
        assert!(prepare_cache(&packed, &cache, &AtomicBool::new(false)).unwrap().built);
        let other_tokenizer = tmp.path().join("tokenizer.json");
        let mut json = std::fs::read_to_string(spec.tokenizer.as_ref().unwrap()).unwrap();
        json.push('\n');
        std::fs::write(&other_tokenizer, json).unwrap();
        let retokenized = DataSpec { tokenizer: Some(other_tokenizer), ..packed.clone() };
        assert!(prepare_cache(&retokenized, &cache, &AtomicBool::new(false)).unwrap().built);
        assert!(!prepare_cache(&retokenized, &cache, &AtomicBool::new(false)).unwrap().built);
        assert_eq!(cache_files(&cache), vec![INDEX, MANIFEST, TOKENS], "no temporary file is left");
    }

    /// The chat template and the field mapping decide the rows too: a change of either rebuilds.
    #[test]
    fn rebuilt_when_the_chat_template_or_the_field_mapping_changes() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = tmp.path().join("data");
        let source = tmp.path().join("chats.jsonl");
        let chat =
            |answer: &str| format!("[{{\"role\": \"user\", \"content\": \"Hi\"}}, {{\"role\": \"assistant\", \"content\": \"{answer}\"}}]");
        std::fs::write(&source, format!("{{\"messages\": {}, \"dialog\": {}}}\n", chat("Yo"), chat("Hello there"))).unwrap();
        let template = tmp.path().join("chat.jinja");
        std::fs::write(&template, "{% for m in messages %}{{ m.content }}\n{% endfor %}").unwrap();
        let spec = DataSpec { source, chat_template: Some(template.clone()), ..spec(Format::Messages) };
        let prepare = |spec: &DataSpec| prepare_cache(spec, &cache, &AtomicBool::new(false)).unwrap().built;
        assert!(prepare(&spec));
        assert!(!prepare(&spec));
        std::fs::write(&template, "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}").unwrap();
        assert!(prepare(&spec));
        let fields = crate::Fields([("messages".to_owned(), "dialog".to_owned())].into());
        let mapped = DataSpec { fields, ..spec.clone() };
        assert!(prepare(&mapped));
        assert!(!prepare(&mapped));
    }

    #[test]
    fn a_build_that_stopped_half_way_is_not_taken_for_a_cache() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = tmp.path().join("data");
        let spec = text_spec(tmp.path(), "{\"text\": \"Hello\"}\n{\"text\": \"world\"}\n");
        prepare_cache(&spec, &cache, &AtomicBool::new(false)).unwrap();

        // Killed after the new data files were renamed in, before the manifest: no manifest.
        std::fs::remove_file(cache.join(MANIFEST)).unwrap();
        assert!(open(&spec, &cache).err().unwrap().to_string().contains("no valid manifest.json"));
        assert!(prepare_cache(&spec, &cache, &AtomicBool::new(false)).unwrap().built);

        // A data file cut short (a disk that filled up, say).
        let tokens = std::fs::read(cache.join(TOKENS)).unwrap();
        std::fs::write(cache.join(TOKENS), &tokens[..tokens.len() - 4]).unwrap();
        assert!(open(&spec, &cache).err().unwrap().to_string().contains("wrong size"));
        assert!(prepare_cache(&spec, &cache, &AtomicBool::new(false)).unwrap().built);

        // A build that fails leaves no temporary files and no manifest for the new settings.
        let bad = text_spec(tmp.path(), "{\"text\": \"Hello\"}\n{\"txt\": 1}\n");
        let msg = prepare_cache(&bad, &cache, &AtomicBool::new(false)).unwrap_err().to_string();
        assert!(msg.ends_with("data.jsonl:2: missing field `text` (column 10)"), "{msg}");
        assert_eq!(cache_files(&cache), vec![INDEX, MANIFEST, TOKENS]);
        assert!(open(&bad, &cache).is_err());
    }

    #[test]
    fn temporary_files_of_dead_builds_are_removed_and_a_stopped_build_leaves_none() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = tmp.path().join("data");
        let spec = text_spec(tmp.path(), "{\"text\": \"Hello\"}\n");
        std::fs::create_dir_all(&cache).unwrap();
        std::fs::write(cache.join("tokens.u32.tmp-4000000000"), "left by a killed build").unwrap();
        let stopped = prepare_cache(&spec, &cache, &AtomicBool::new(true)).unwrap_err();
        assert!(matches!(stopped, DataError::Stopped(_)), "{stopped}");
        assert!(cache_files(&cache).is_empty(), "{:?}", cache_files(&cache));
        assert!(prepare_cache(&spec, &cache, &AtomicBool::new(false)).unwrap().built);
    }
}
