//! `[output]`: where the run writes, what it exports, and how often it saves.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutputSection {
    pub dir: PathBuf,
    pub export: ExportFormat,
    /// Save every N steps (0: only at the end and when asked to stop).
    pub save_every: u64,
    /// Complete saves kept (0: all).
    pub keep_last: usize,
    /// Save after the last step. Off for benchmarks and throughput checks that keep nothing (a
    /// save of a large model's optimizer states takes minutes); `save_every` and a stop on
    /// request still save.
    pub save_at_end: bool,
    /// Write TensorBoard event files under `<dir>/tb/`.
    pub tensorboard: bool,
}

impl Default for OutputSection {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("runs/default"),
            export: ExportFormat::Hf,
            save_every: 0,
            keep_last: 2,
            save_at_end: true,
            tensorboard: false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ExportFormat {
    None,
    Hf,
    Peft,
}
