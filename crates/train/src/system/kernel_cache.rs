//! Where burn-cuda keeps the kernels it compiles. It compiles each kernel at run time (NVRTC),
//! and cubecl keeps the PTX only when its config names a cache: without one every cuda run, and
//! every rank, compiles all its kernels again before its first step. A run whose cubecl config
//! (a `cubecl.toml` or `burn.toml` in the working directory or above it, `CUBECL_*` variables)
//! names no compilation cache gets `$XDG_CACHE_HOME/shard-train/cubecl` (`~/.cache/...`), which
//! cubecl locks for several processes and keys by its version.

use std::path::{Path, PathBuf};

/// The cache directory a run uses unless cubecl's config names one.
pub fn default_dir(xdg_cache_home: Option<&Path>, home: Option<&Path>) -> Option<PathBuf> {
    let base = match (xdg_cache_home, home) {
        (Some(xdg), _) if xdg.is_absolute() => xdg.to_path_buf(),
        (_, Some(home)) => home.join(".cache"),
        _ => return None,
    };
    Some(base.join("shard-train").join("cubecl"))
}

/// Sets cubecl's config for this process (before burn-cuda first uses it): the one it would
/// read itself, with the PTX cache in [`default_dir`] when it names none. With `announce` (rank
/// 0), says where the kernels are cached.
#[cfg(feature = "cuda")]
pub fn configure(announce: bool) {
    use burn_cubecl::cubecl::config::{CubeClRuntimeConfig, RuntimeConfig, cache::CacheConfig};
    // cubecl panics on a second set; a config already in use (read or set) stays as it is.
    if CubeClRuntimeConfig::storage().lock().is_some() {
        return;
    }
    let mut config = CubeClRuntimeConfig::from_current_dir().override_from_env();
    if config.compilation.cache.is_none() {
        let env = |name| std::env::var_os(name).map(PathBuf::from);
        config.compilation.cache = default_dir(env("XDG_CACHE_HOME").as_deref(), env("HOME").as_deref()).map(CacheConfig::File);
    }
    let dir = config.compilation.cache.as_ref().map(CacheConfig::root);
    CubeClRuntimeConfig::set(config);
    match dir {
        Some(dir) if announce => println!("kernels: compiled at run time, cached in {}", dir.display()),
        None if announce => println!("kernels: compiled at run time, not cached (no HOME or XDG_CACHE_HOME)"),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_is_under_xdg_cache_home_or_home() {
        let dir = |xdg: Option<&str>, home: Option<&str>| default_dir(xdg.map(Path::new), home.map(Path::new));
        assert_eq!(dir(Some("/var/cache"), Some("/root")), Some(PathBuf::from("/var/cache/shard-train/cubecl")));
        assert_eq!(dir(None, Some("/root")), Some(PathBuf::from("/root/.cache/shard-train/cubecl")));
        // A relative XDG_CACHE_HOME is invalid by the spec: ignored.
        assert_eq!(dir(Some("cache"), Some("/home/u")), Some(PathBuf::from("/home/u/.cache/shard-train/cubecl")));
        assert_eq!(dir(None, None), None);
    }
}
