//! Checkpoints in every form the trainer meets: Hugging Face safetensors (memory-mapped reads of
//! whole tensors or element ranges, f32/bf16/f16 on disk, f32 out; streaming writes of single or
//! sharded checkpoints), peft's adapter names and config, and the sharded saves a run resumes from
//! (one file per rank, the train state, the directory protocol that makes them atomic, checksums);
//! and bitsandbytes' NF4 checkpoints, written from a float one and read back by range.

mod bnb;
mod dtype;
mod hf_export;
mod hf_reader;
mod inside;
mod load;
mod merge;
mod nf4_quantize;
mod nf4_reader;
mod out_dir;
mod peft;
pub mod pid;
mod saved;
pub mod saves;
mod st_writer;
mod train_state;

use std::path::PathBuf;

pub use bnb::{QUANT_STATE_NF4, QuantState, nf4_part_headers, nf4_part_names};
pub use dtype::DiskDtype;
pub use hf_export::{DEFAULT_MAX_SHARD_BYTES, HfExport};
pub use hf_reader::HfCheckpoint;
pub use load::load_weights;
pub use merge::merge_lora;
pub use nf4_quantize::{QuantizeSummary, quantize_checkpoint};
pub use nf4_reader::{Nf4Checkpoint, is_quantized};
pub use out_dir::{OutDir, is_export_file};
pub use peft::{PEFT_PREFIX, adapter_config, peft_name};
pub use saved::SavedCheckpoint;
pub use st_writer::{SafetensorsWriter, TensorHeader, file_checksum};
pub use train_state::{FORMAT, ParamState, PartState, ScheduleState, ShardKind, TrainState, UnitState, rank_pieces, shard_name};

/// Files besides the weights that make a model directory loadable as the model was (copied, when
/// present, into an export or a quantized copy).
pub const COMPANION_FILES: [&str; 5] =
    ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model", "generation_config.json"];

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("--out {path}: {why}")]
    OutDir { path: PathBuf, why: String },
    #[error("checkpoint directory {0} does not exist")]
    NotADirectory(PathBuf),
    #[error("{0} holds neither model.safetensors nor model.safetensors.index.json")]
    NoWeights(PathBuf),
    /// A file that cannot be read as what it should be: a safetensors file, or a JSON file of a
    /// checkpoint (train_state.json, model.safetensors.index.json, config.json), or a save's
    /// directory whose state does not fit.
    #[error("{}", corrupt_message(path, why))]
    Corrupt { path: PathBuf, why: String },
    #[error("{path} is damaged: {why}")]
    Damaged { path: PathBuf, why: String },
    #[error("{0} is not a complete checkpoint: it has no COMPLETE marker (a save that did not finish)")]
    Incomplete(PathBuf),
    #[error("{file}: `{key}` names {name:?}, which is not inside {dir}: only files inside it are read")]
    Outside { file: PathBuf, key: String, name: String, dir: PathBuf },
    #[error("{0} holds no complete checkpoint to resume from")]
    NoCheckpoint(PathBuf),
    #[error("{origin}: no tensor `{name}`")]
    MissingTensor { origin: PathBuf, name: String },
    #[error("{origin}: tensor `{name}` is {found}, expected {expected}")]
    WrongDtype { origin: PathBuf, name: String, expected: DiskDtype, found: DiskDtype },
    #[error(transparent)]
    Config(#[from] shard_model::ConfigError),
    #[error("{origin}: `{key}`: {why}")]
    BadQuantization { origin: PathBuf, key: String, why: String },
    #[error("{}", mismatch_message(origin, missing, unexpected, misshaped))]
    Mismatch { origin: PathBuf, missing: Vec<String>, unexpected: Vec<String>, misshaped: Vec<String> },
}

fn corrupt_message(path: &std::path::Path, why: &str) -> String {
    match path.extension().and_then(|e| e.to_str()) {
        Some("safetensors") => {
            format!("{} is not a readable safetensors file ({why}); is it truncated or still being written?", path.display())
        }
        Some("json") => format!("{} is not a valid {} ({why})", path.display(), path.file_name().unwrap_or_default().to_string_lossy()),
        _ => format!("{} cannot be used: {why}", path.display()),
    }
}

/// Tensors named in each list of a mismatch; the rest are counted (a checkpoint of another
/// architecture misses hundreds).
const MISMATCH_NAMED: usize = 5;

fn mismatch_message(origin: &std::path::Path, missing: &[String], unexpected: &[String], misshaped: &[String]) -> String {
    let mut msg = format!("{} does not hold the tensors the model config implies:", origin.display());
    for (what, names) in [("missing", missing), ("unexpected", unexpected), ("wrong shape", misshaped)] {
        if !names.is_empty() {
            let more = names.len().saturating_sub(MISMATCH_NAMED);
            let more = if more > 0 { format!(" and {more} more") } else { String::new() };
            msg.push_str(&format!("\n  {what} ({}): {}{more}", names.len(), names[..names.len().min(MISMATCH_NAMED)].join(", ")));
        }
    }
    msg
}
