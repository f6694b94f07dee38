//! `[eval]`: the held-out examples and how often they are evaluated.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::invalid::{Check, invalid, not_a_file};

/// Held-out examples, evaluated every `every` steps and at the end: `path`, a file in the
/// format of `[data]` (tokenized as it is), or `fraction`, a slice of the training data that is
/// never trained on.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EvalSection {
    pub path: Option<PathBuf>,
    pub fraction: Option<f64>,
    /// Steps between evaluations (0: only at the end).
    #[serde(default)]
    pub every: u64,
}

impl EvalSection {
    pub(super) fn validate(&self) -> Check {
        match (&self.path, self.fraction) {
            (Some(_), Some(_)) | (None, None) => {
                invalid("eval", "needs either `path` (a held-out file) or `fraction` (of the training data), not both")
            }
            (Some(file), None) if !file.is_file() => invalid("eval.path", not_a_file(file)),
            (None, Some(fraction)) if !(fraction > 0.0 && fraction < 1.0) => {
                invalid("eval.fraction", format!("must lie in (0, 1), found {fraction}"))
            }
            _ => Ok(()),
        }
    }
}
