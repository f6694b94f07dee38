//! What turns a dataset file into the token batches each rank trains on: examples with their
//! loss masks, right-padded micro-batches, and a sampler whose order does not depend on the
//! number of ranks. No tensors here: batches are plain vectors.

mod batch;
mod sampler;
mod tokenized;

use std::path::PathBuf;

pub use batch::{Batch, Example};
pub use sampler::{Sampler, StepSlice};
pub use tokenized::read_tokenized;

/// Labels that carry no loss (HF's `ignore_index`).
pub const IGNORE_INDEX: i64 = -100;

/// A problem with the dataset; user errors name the file and line.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("cannot read dataset {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}:{line}: {why}")]
    BadExample { path: PathBuf, line: usize, why: String },
    #[error("{0} holds no examples")]
    Empty(PathBuf),
}

/// A dataset held as examples in file order.
#[derive(Debug, Clone)]
pub struct Dataset {
    pub examples: Vec<Example>,
    /// Examples cut to `seq_len`.
    pub truncated: usize,
}

impl Dataset {
    pub fn len(&self) -> usize {
        self.examples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.examples.is_empty()
    }

    /// Example `i` in file order.
    pub fn get(&self, i: usize) -> &Example {
        &self.examples[i]
    }
}
