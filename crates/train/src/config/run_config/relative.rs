//! A config's relative paths, read from the config file's own directory.

use std::path::{Component, Path, PathBuf};

/// `path` read from `dir` when relative, without the `x/..` steps that joining adds
/// (`configs/../runs/a` is `runs/a`). A step back over a symbolic link stays, since the link's
/// `..` is its target's parent, not the directory that holds the link.
pub fn from_dir(dir: &Path, path: &Path) -> PathBuf {
    if path.is_absolute() {
        return path.to_path_buf();
    }
    let mut joined = PathBuf::new();
    for component in dir.join(path).components() {
        let over_a_real_dir = matches!(joined.components().next_back(), Some(Component::Normal(_)))
            && !joined.symlink_metadata().is_ok_and(|m| m.file_type().is_symlink());
        match component {
            Component::ParentDir if over_a_real_dir => {
                joined.pop();
            }
            Component::CurDir => {}
            other => joined.push(other),
        }
    }
    if joined.as_os_str().is_empty() { PathBuf::from(".") } else { joined }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_lose_the_steps_back_that_joining_adds() {
        let tmp = tempfile::tempdir().unwrap();
        let configs = tmp.path().join("configs");
        std::fs::create_dir(&configs).unwrap();
        assert_eq!(from_dir(&configs, Path::new("../runs/a")), tmp.path().join("runs/a"));
        assert_eq!(from_dir(Path::new("configs"), Path::new("../runs/a")), PathBuf::from("runs/a"));
        assert_eq!(from_dir(Path::new("configs"), Path::new("./data.jsonl")), PathBuf::from("configs/data.jsonl"));
        assert_eq!(from_dir(Path::new(""), Path::new("../x")), PathBuf::from("../x"));
        assert_eq!(from_dir(Path::new("configs"), Path::new("/abs/../y")), PathBuf::from("/abs/../y"));
    }

    #[test]
    fn a_step_back_over_a_symbolic_link_stays() {
        let tmp = tempfile::tempdir().unwrap();
        let (real, link) = (tmp.path().join("deep/real"), tmp.path().join("link"));
        std::fs::create_dir_all(&real).unwrap();
        std::os::unix::fs::symlink(&real, &link).unwrap();
        assert_eq!(from_dir(&link, Path::new("../runs")), link.join("../runs"));
    }
}
