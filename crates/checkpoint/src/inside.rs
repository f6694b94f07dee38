//! Paths that a file names (a model index's shard files, a save's rank files, `latest`'s save) are
//! followed only inside the directory that holds that file: a name with `..` or a root could lead
//! a reader to another run's files, or anywhere on the machine. (A symbolic link inside the
//! directory is followed: that is how the Hugging Face cache lays out a model.)

use std::path::{Component, Path, PathBuf};

use crate::CheckpointError;

/// `dir/name`, when `name` is a relative path of plain names; else an error naming `file` (the
/// file that holds `name`), `key` (where in it) and `name`.
pub fn join_inside(dir: &Path, name: &str, file: &Path, key: &str) -> Result<PathBuf, CheckpointError> {
    let plain = !name.is_empty() && Path::new(name).components().all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
    if !plain {
        return Err(CheckpointError::Outside { file: file.to_owned(), key: key.to_owned(), name: name.to_owned(), dir: dir.to_owned() });
    }
    Ok(dir.join(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_relative_names_stay_inside() {
        let (dir, file) = (Path::new("/m"), Path::new("/m/index.json"));
        assert_eq!(join_inside(dir, "a.safetensors", file, "k").unwrap(), Path::new("/m/a.safetensors"));
        assert_eq!(join_inside(dir, "./sub/a.safetensors", file, "k").unwrap(), Path::new("/m/sub/a.safetensors"));
        for name in ["../a.safetensors", "sub/../../a", "/etc/passwd", ""] {
            let err = join_inside(dir, name, file, "weight_map.w").unwrap_err().to_string();
            assert!(err.contains("/m/index.json") && err.contains("`weight_map.w`") && err.contains("not inside /m"), "{name}: {err}");
        }
    }
}
