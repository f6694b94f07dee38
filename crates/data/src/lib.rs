//! What turns a user's JSONL dataset into the token rows each rank trains on: tokenization and
//! loss masks per format, truncation and packing, a memory-mapped cache built once per run, and a
//! sampler whose order does not depend on the number of ranks. No tensors and no MPI here.

mod batch;
mod build;
mod cache;
mod dataset;
mod format;
mod packing;
mod progress;
mod sampler;
mod spec;
mod tokenizer;

use std::path::PathBuf;

pub use batch::{Batch, BatchRules, Example, Row};
pub use cache::{CacheStats, Prepared, check_setup, prepare_cache};
pub use dataset::{Dataset, PackingSummary};
pub use format::{Fields, MISTRAL_CHAT_TEMPLATE, Prompts, TemplateSource};
pub use sampler::{Sampler, SamplerPosition, StepSlice};
pub use spec::{DataSpec, Format, OnBadExample};
use tokenizer::Specials;
pub use tokenizer::TextTokenizer;

pub use shard_core::IGNORE_INDEX;

/// A problem with the dataset, its tokenizer or its cache; user errors name the file and line.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("{path}:{line}: {why}")]
    BadExample { path: PathBuf, line: usize, why: String },
    #[error("{path} holds no examples{skipped}")]
    Empty { path: PathBuf, skipped: String },
    /// Every label is -100: training would see a loss of 0 and change nothing but by weight decay.
    #[error("{0}: no token carries loss (every label is -100): there is nothing to train on")]
    NoTargets(PathBuf),
    #[error("tokenizer {path}: {why}")]
    Tokenizer { path: PathBuf, why: String },
    /// The settings cannot make a dataset (e.g. a text format without a tokenizer).
    #[error("{0}")]
    Setup(String),
    #[error("dataset cache {path}: {why}")]
    Cache { path: PathBuf, why: String },
    #[error("stopped on request while building the dataset cache {0}")]
    Stopped(PathBuf),
    #[error("cannot resume from the saved data position: {0}")]
    Position(String),
}

impl DataError {
    fn io(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> Self + '_ {
        move |source| DataError::Io { path: path.to_owned(), source }
    }

    fn write(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> Self + '_ {
        move |source| DataError::Write { path: path.to_owned(), source }
    }
}
