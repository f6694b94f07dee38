//! What a `runtime.device = "cuda"` run needs on its machine, checked right after the plan is
//! printed (a plan that does not fit is refused first), before anything is loaded, so that each missing piece is one line naming its fix, not a panic deep inside burn-cuda or
//! cudarc (which panic when a library cannot be loaded).
//!
//! [`check_node`] probes the machine (feature `cuda`, which the binary's `cuda` turns on, links
//! cudarc to ask for the driver) into [`CudaHost`]; [`missing_pieces`] turns that into the lines,
//! so that every message is unit-tested here without a GPU.

use std::ffi::CString;
use std::path::{Path, PathBuf};

use shard_comm::World;

use crate::config::run_config::{Collectives, Device, RunConfig};
use crate::system::topology::gpu_of_local_rank;

/// What a cuda run found on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CudaHost {
    /// The binary was built with `--features cuda`.
    pub built_with_cuda: bool,
    /// The CUDA driver library (libcuda) can be loaded.
    pub driver: bool,
    /// The CUDA include dir that burn-cuda's run-time kernel compiler (NVRTC) needs, if found.
    pub include_dir: Option<PathBuf>,
    /// NVRTC itself, which cudarc loads at the first kernel (and panics on the device's thread
    /// without it).
    pub nvrtc: Result<(), NvrtcNotFound>,
    /// `libnccl.so` can be loaded (the name cudarc looks for).
    pub nccl: bool,
    /// GPUs this process can see (after `CUDA_VISIBLE_DEVICES`); `None` when it could not ask
    /// (no driver, or a build without CUDA).
    pub visible_gpus: Option<usize>,
    /// `CUDA_VISIBLE_DEVICES`, which picks the GPU a rank binds (see `gpu_of_local_rank`).
    pub cuda_visible_devices: Option<String>,
}

/// Where NVRTC was looked for and not found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NvrtcNotFound {
    /// The library names cudarc tries, in its order.
    pub names: Vec<String>,
    /// `LD_LIBRARY_PATH` as the probe saw it (the loader also looks in its own system paths).
    pub ld_library_path: String,
}

/// One line per missing piece, each naming its fix; empty when the node has what the run needs.
/// A build without CUDA is the only line then: nothing else matters until it is rebuilt.
pub fn missing_pieces(host: &CudaHost, world: &World, collectives: Collectives) -> Vec<String> {
    if !host.built_with_cuda {
        return vec![
            "runtime.device = \"cuda\" needs a binary built with `cargo build --release --features cuda` (this one has no CUDA backend)"
                .into(),
        ];
    }
    let mut lines = Vec::new();
    if !host.driver {
        lines.push("the CUDA driver library (libcuda.so) cannot be loaded: install the NVIDIA driver, or add the folder holding libcuda.so.1 to LD_LIBRARY_PATH".into());
    }
    if host.include_dir.is_none() {
        lines.push("no CUDA include dir (burn-cuda compiles its kernels with NVRTC at run time): set CUDA_PATH to the CUDA toolkit (the folder holding include/cuda.h), or install it in /usr/local/cuda".into());
    }
    if let Err(missing) = &host.nvrtc {
        lines.push(format!(
            "NVRTC (burn-cuda's run-time kernel compiler) cannot be loaded: none of the names cudarc tries ({}) is found in LD_LIBRARY_PATH ({:?}) or the loader's system paths; \
             add the CUDA toolkit's lib64 or pip's SITE/nvidia/cu13/lib (nvidia-cuda-nvrtc) to LD_LIBRARY_PATH (tests/gpu/gpu_env.sh does both)",
            missing.names.join(", "),
            missing.ld_library_path
        ));
    }
    // With NCCL, every collective goes through it, one rank's too.
    if collectives == Collectives::Nccl && !host.nccl {
        lines.push(format!(
            "a cuda run ({} rank(s)) moves its shards with NCCL, but libnccl.so cannot be loaded: NCCL's pip wheel (nvidia-nccl-cu12 / -cu13) ships only libnccl.so.2, so link it and point to it: \
             `ln -s SITE/nvidia/nccl/lib/libnccl.so.2 SITE/nvidia/nccl/lib/libnccl.so` and `export LD_LIBRARY_PATH=SITE/nvidia/nccl/lib:$LD_LIBRARY_PATH` \
             (SITE: the wheel's site-packages, `python -c 'import site; print(site.getsitepackages()[0])'`); or move the shards over MPI: runtime.collectives = \"mpi\"",
            world.size
        ));
    }
    // The GPU this rank binds (as the cuda worker picks it) must be one it sees.
    match gpu_of_local_rank(world.local_rank, host.cuda_visible_devices.as_deref()) {
        Err(e) => lines.push(e.to_string()),
        Ok(gpu) => {
            if let Some(gpus) = host.visible_gpus
                && gpu >= gpus
            {
                lines.push(format!(
                    "{} ranks run on this node but it has {gpus} visible GPU(s) (local rank {} binds GPU {gpu}): start at most {gpus} ranks per node, or give each rank one GPU with CUDA_VISIBLE_DEVICES",
                    world.local_size, world.local_rank
                ));
            }
        }
    }
    lines
}

/// After the plan, before anything is loaded: a cuda run stops here, one line per missing piece, if this node
/// lacks something it needs (the CUDA build, the driver, the CUDA include dir, NCCL, its GPU); a
/// wgpu run, if the binary has no wgpu backend.
pub fn check_node(run: &RunConfig, world: &World) -> anyhow::Result<()> {
    match run.runtime.device {
        Device::Cpu => return Ok(()),
        Device::Wgpu if cfg!(feature = "wgpu") => return Ok(()),
        Device::Wgpu => anyhow::bail!(
            "this node cannot run runtime.device = \"wgpu\":\n  runtime.device = \"wgpu\" needs a binary built with `cargo build --release --features wgpu` (this one has no wgpu backend)"
        ),
        Device::Cuda => {}
    }
    let lines = missing_pieces(&probe_host(), world, run.collectives());
    if !lines.is_empty() {
        anyhow::bail!("this node cannot run runtime.device = \"cuda\":\n  {}", lines.join("\n  "));
    }
    Ok(())
}

/// The GPU this rank drives, among those `CUDA_VISIBLE_DEVICES` shows.
pub fn gpu_of_this_rank(world: &World) -> anyhow::Result<usize> {
    gpu_of_local_rank(world.local_rank, std::env::var("CUDA_VISIBLE_DEVICES").ok().as_deref())
}

fn probe_host() -> CudaHost {
    let (driver, visible_gpus) = probe_driver();
    CudaHost {
        built_with_cuda: cfg!(feature = "cuda"),
        driver,
        include_dir: cuda_include_dir(std::env::var_os("CUDA_PATH").as_deref().map(Path::new)),
        nvrtc: probe_nvrtc(),
        nccl: library_loads("libnccl.so"),
        visible_gpus,
        cuda_visible_devices: std::env::var("CUDA_VISIBLE_DEVICES").ok(),
    }
}

/// Whether libcuda loads (as cudarc looks for it) and how many GPUs it shows this process.
#[cfg(feature = "cuda")]
fn probe_driver() -> (bool, Option<usize>) {
    use cudarc::driver::result;
    // SAFETY: only probes whether the CUDA driver library can be loaded.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return (false, None);
    }
    let gpus = result::init().and_then(|()| result::device::get_count()).ok();
    (true, gpus.map(|n| n as usize))
}

/// A build without CUDA does not look for the driver: its one line is to rebuild.
#[cfg(not(feature = "cuda"))]
fn probe_driver() -> (bool, Option<usize>) {
    (false, None)
}

/// Whether NVRTC loads under one of the names cudarc tries (its build's CUDA version among them).
#[cfg(feature = "cuda")]
fn probe_nvrtc() -> Result<(), NvrtcNotFound> {
    let names = cudarc::get_lib_name_candidates("nvrtc");
    if names.iter().any(|name| library_loads(name)) {
        return Ok(());
    }
    Err(NvrtcNotFound { names, ld_library_path: std::env::var("LD_LIBRARY_PATH").unwrap_or_default() })
}

/// A build without CUDA does not look for NVRTC either.
#[cfg(not(feature = "cuda"))]
fn probe_nvrtc() -> Result<(), NvrtcNotFound> {
    Ok(())
}

/// The CUDA include dir: `$CUDA_PATH/include` when CUDA_PATH is set, else /usr/local/cuda/include;
/// `None` unless it holds cuda.h.
pub fn cuda_include_dir(cuda_path: Option<&Path>) -> Option<PathBuf> {
    let dir = match cuda_path {
        Some(root) => root.join("include"),
        None => PathBuf::from("/usr/local/cuda/include"),
    };
    dir.join("cuda.h").is_file().then_some(dir)
}

/// Whether the dynamic loader finds and loads `name` (`libnccl.so`), as cudarc will.
pub fn library_loads(name: &str) -> bool {
    let Ok(name) = CString::new(name) else { return false };
    // SAFETY: dlopen with a valid C string; a handle it returns is closed at once.
    unsafe {
        let handle = libc::dlopen(name.as_ptr(), libc::RTLD_LAZY | libc::RTLD_LOCAL);
        if handle.is_null() {
            return false;
        }
        libc::dlclose(handle);
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A node with everything a cuda run needs, 4 GPUs.
    fn ready() -> CudaHost {
        CudaHost {
            built_with_cuda: true,
            driver: true,
            include_dir: Some("/usr/local/cuda/include".into()),
            nvrtc: Ok(()),
            nccl: true,
            visible_gpus: Some(4),
            cuda_visible_devices: None,
        }
    }

    fn ranks(size: usize, local_size: usize) -> World {
        World { rank: 0, size, local_rank: 0, local_size, nodes: size / local_size }
    }

    /// The last local rank of a node of `local_size` ranks.
    fn last_local(size: usize, local_size: usize) -> World {
        World { rank: local_size - 1, local_rank: local_size - 1, ..ranks(size, local_size) }
    }

    #[test]
    fn a_ready_node_has_nothing_missing() {
        assert!(missing_pieces(&ready(), &ranks(4, 4), Collectives::Nccl).is_empty());
    }

    #[test]
    fn a_build_without_cuda_says_how_to_build() {
        let host = CudaHost {
            built_with_cuda: false,
            driver: false,
            include_dir: None,
            nvrtc: Err(no_nvrtc()),
            nccl: false,
            visible_gpus: None,
            cuda_visible_devices: None,
        };
        let lines = missing_pieces(&host, &ranks(4, 4), Collectives::Nccl);
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(lines[0].contains("--features cuda"), "{}", lines[0]);
    }

    #[test]
    fn no_driver_names_libcuda() {
        let lines = missing_pieces(&CudaHost { driver: false, visible_gpus: None, ..ready() }, &ranks(1, 1), Collectives::Nccl);
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(lines[0].contains("libcuda.so") && lines[0].contains("LD_LIBRARY_PATH"), "{}", lines[0]);
    }

    #[test]
    fn no_include_dir_names_cuda_path() {
        let lines = missing_pieces(&CudaHost { include_dir: None, ..ready() }, &ranks(1, 1), Collectives::Nccl);
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(lines[0].contains("CUDA_PATH") && lines[0].contains("NVRTC"), "{}", lines[0]);
    }

    fn no_nvrtc() -> NvrtcNotFound {
        NvrtcNotFound { names: vec!["libnvrtc.so".into(), "libnvrtc.so.13".into()], ld_library_path: "/opt/links".into() }
    }

    #[test]
    fn no_nvrtc_names_where_it_looked_and_the_pip_folder() {
        let lines = missing_pieces(&CudaHost { nvrtc: Err(no_nvrtc()), ..ready() }, &ranks(1, 1), Collectives::Mpi);
        assert_eq!(lines.len(), 1, "{lines:?}");
        for part in ["NVRTC", "libnvrtc.so, libnvrtc.so.13", "LD_LIBRARY_PATH (\"/opt/links\")", "lib64", "nvidia/cu13/lib"] {
            assert!(lines[0].contains(part), "{part:?} in {}", lines[0]);
        }
    }

    #[test]
    fn no_nccl_says_how_to_link_the_wheel_at_any_world_size() {
        let host = CudaHost { nccl: false, ..ready() };
        for world in [ranks(1, 1), ranks(2, 2)] {
            let lines = missing_pieces(&host, &world, Collectives::Nccl);
            assert_eq!(lines.len(), 1, "{lines:?}");
            assert!(
                lines[0].contains("libnccl.so.2") && lines[0].contains("ln -s") && lines[0].contains("LD_LIBRARY_PATH"),
                "{}",
                lines[0]
            );
            assert!(lines[0].contains("runtime.collectives = \"mpi\""), "{}", lines[0]);
        }
    }

    #[test]
    fn mpi_collectives_need_no_nccl() {
        let host = CudaHost { nccl: false, ..ready() };
        assert!(missing_pieces(&host, &ranks(2, 2), Collectives::Mpi).is_empty());
    }

    #[test]
    fn fewer_gpus_than_local_ranks_is_refused() {
        let host = CudaHost { visible_gpus: Some(2), ..ready() };
        assert!(missing_pieces(&host, &last_local(4, 2), Collectives::Nccl).is_empty(), "2 ranks per node on 2 GPUs");
        let lines = missing_pieces(&host, &last_local(4, 4), Collectives::Nccl);
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(lines[0].contains("4 ranks run on this node but it has 2 visible GPU(s) (local rank 3 binds GPU 3)"), "{}", lines[0]);
    }

    #[test]
    fn a_rank_shown_one_gpu_uses_it() {
        // SLURM's --gpus-per-task=1, or several ranks sharing one GPU (NCCL_MULTI_RANK_GPU_ENABLE).
        let host = CudaHost { visible_gpus: Some(1), cuda_visible_devices: Some("3".into()), ..ready() };
        assert!(missing_pieces(&host, &last_local(4, 4), Collectives::Nccl).is_empty());
        let host = CudaHost { visible_gpus: Some(2), cuda_visible_devices: Some("0,1".into()), ..ready() };
        let lines = missing_pieces(&host, &last_local(4, 4), Collectives::Nccl);
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(lines[0].contains("local rank 3 has no GPU") && lines[0].contains("\"0,1\""), "{}", lines[0]);
    }

    #[test]
    fn every_missing_piece_is_its_own_line() {
        let host = CudaHost {
            built_with_cuda: true,
            driver: false,
            include_dir: None,
            nvrtc: Err(no_nvrtc()),
            nccl: false,
            visible_gpus: Some(1),
            cuda_visible_devices: None,
        };
        assert_eq!(missing_pieces(&host, &last_local(2, 2), Collectives::Nccl).len(), 5);
    }

    #[test]
    fn the_include_dir_must_hold_cuda_h() {
        let root = tempfile::tempdir().unwrap();
        assert_eq!(cuda_include_dir(Some(root.path())), None);
        std::fs::create_dir(root.path().join("include")).unwrap();
        std::fs::write(root.path().join("include/cuda.h"), "").unwrap();
        assert_eq!(cuda_include_dir(Some(root.path())), Some(root.path().join("include")));
    }

    #[test]
    fn a_library_that_is_not_there_does_not_load() {
        assert!(!library_loads("libshard-train-no-such-library.so"));
        assert!(library_loads("libc.so.6"));
    }
}
