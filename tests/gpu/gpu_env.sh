# Sourced by tests/gpu/check.sh on a GPU machine: puts in place what the cuda binary loads at run
# time and such a machine (CUDA, PyTorch, NCCL's pip wheel) may not have where it looks, saying
# each thing it did. Nothing is installed; what it links lies in LINK_DIR.
#
#   source tests/gpu/gpu_env.sh LINK_DIR
#
# - NCCL: cudarc loads libnccl.so, and the nvidia-nccl-cu12/-cu13 wheels ship only
#   libnccl.so.2 (in nvidia/nccl/lib or nvidia/cu13/lib). When no libnccl.so is on
#   LD_LIBRARY_PATH, the wheel's (the first on python3's path) is linked as LINK_DIR/libnccl.so,
#   and both folders go on LD_LIBRARY_PATH.
# - NVRTC's include dir: with no CUDA_PATH and no /usr/local/cuda/include/cuda.h, CUDA_PATH is
#   the toolkit that holds the nvcc on PATH.
# - NVRTC itself (cudarc loads it at the first kernel): the toolkit's lib64 and pip's
#   nvidia/cu13/lib (the CUDA 13 wheels' libraries: NVRTC, NCCL) go on LD_LIBRARY_PATH where they
#   exist.
gpu_env_link_dir=${1:?usage: source tests/gpu/gpu_env.sh LINK_DIR}
gpu_env_has_nccl=
# (check.sh runs under `set -u`, and a machine may have no LD_LIBRARY_PATH at all.)
gpu_env_ld=${LD_LIBRARY_PATH:-}
for gpu_env_dir in ${gpu_env_ld//:/ }; do
  [ -e "$gpu_env_dir/libnccl.so" ] && gpu_env_has_nccl=1
done

# Prepends DIR to LD_LIBRARY_PATH unless it is there already, and says so.
gpu_env_add_lib_dir() { # DIR WHAT
  case ":${LD_LIBRARY_PATH:-}:" in *":$1:"*) return ;; esac
  export LD_LIBRARY_PATH="$1${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  echo "gpu env: LD_LIBRARY_PATH gains $1 ($2)"
}

# The first of python3's paths (PYTHONPATH first) holding nvidia/SUBDIR, as a folder.
gpu_env_pip_dir() { # SUBDIR
  python3 - "$1" <<'PY' 2>/dev/null
import os, site, sys
for root in sys.path + site.getsitepackages() + [site.getusersitepackages()]:
    path = os.path.join(root, "nvidia", sys.argv[1])
    if os.path.isdir(path):
        print(path)
        sys.exit()
PY
}

if [ -z "$gpu_env_has_nccl" ]; then
  gpu_env_so2=
  for gpu_env_dir in "$(gpu_env_pip_dir nccl/lib)" "$(gpu_env_pip_dir cu13/lib)"; do
    if [ -n "$gpu_env_dir" ] && [ -e "$gpu_env_dir/libnccl.so.2" ]; then
      gpu_env_so2=$gpu_env_dir/libnccl.so.2
      break
    fi
  done
  if [ -n "$gpu_env_so2" ]; then
    mkdir -p "$gpu_env_link_dir"
    ln -sf "$gpu_env_so2" "$gpu_env_link_dir/libnccl.so"
    export LD_LIBRARY_PATH="$gpu_env_link_dir:$(dirname "$gpu_env_so2")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    echo "gpu env: linked $gpu_env_link_dir/libnccl.so to NCCL's wheel, $gpu_env_so2"
  fi
fi
if [ -z "${CUDA_PATH:-}" ] && [ ! -e /usr/local/cuda/include/cuda.h ] && command -v nvcc > /dev/null; then
  CUDA_PATH=$(dirname "$(dirname "$(command -v nvcc)")")
  export CUDA_PATH
  echo "gpu env: CUDA_PATH=$CUDA_PATH (the toolkit of $(command -v nvcc))"
fi
gpu_env_toolkit=${CUDA_PATH:-/usr/local/cuda}
[ -d "$gpu_env_toolkit/lib64" ] && gpu_env_add_lib_dir "$gpu_env_toolkit/lib64" "the CUDA toolkit's libraries: NVRTC"
gpu_env_dir=$(gpu_env_pip_dir cu13/lib)
[ -n "$gpu_env_dir" ] && gpu_env_add_lib_dir "$gpu_env_dir" "pip's CUDA 13 libraries: NVRTC, NCCL"
unset gpu_env_link_dir gpu_env_has_nccl gpu_env_dir gpu_env_so2 gpu_env_ld gpu_env_toolkit
unset -f gpu_env_add_lib_dir gpu_env_pip_dir
