//! The one shape of a run config's errors, so that each names the file and the key.

use std::path::{Path, PathBuf};

/// A config that cannot be used; the message names the file and key.
#[derive(Debug, thiserror::Error)]
pub enum RunConfigError {
    #[error("cannot read run config {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: `{key}` {why}")]
    Invalid { path: PathBuf, key: &'static str, why: String },
}

/// A key whose value cannot be used, and why; the file is added by [`RunConfigError::invalid`].
#[derive(Debug)]
pub(super) struct InvalidKey {
    pub key: &'static str,
    pub why: String,
}

/// The result of one check of the config's values.
pub(super) type Check = Result<(), InvalidKey>;

/// `key` cannot be used: `why` says what it holds and what was expected.
pub(super) fn invalid(key: &'static str, why: impl Into<String>) -> Check {
    Err(InvalidKey { key, why: why.into() })
}

impl RunConfigError {
    /// `invalid` as an error of the config file at `path`.
    pub(super) fn invalid(path: &Path, InvalidKey { key, why }: InvalidKey) -> Self {
        Self::Invalid { path: path.to_owned(), key, why }
    }
}

/// Why `path`, which should be a file, is not: a directory, or nothing.
pub(super) fn not_a_file(path: &Path) -> String {
    let why = if path.is_dir() { "a directory, expected a file" } else { "no such file" };
    format!("= {}: {why}", path.display())
}

/// Whether `value`, used as an f32, is finite there (1e39 is finite as f64, infinite as f32).
pub(super) fn f32_is_finite(value: f64) -> bool {
    (value as f32).is_finite()
}
