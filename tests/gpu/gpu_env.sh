# Sourced by tests/gpu/check.sh on a GPU machine: puts in place what the cuda binary loads at run
# time and such a machine (CUDA, PyTorch, NCCL's pip wheel) may not have where it looks, saying
# each thing it did. Nothing is installed; what it links lies in LINK_DIR.
#
#   source tests/gpu/gpu_env.sh LINK_DIR
#
# - NCCL: cudarc loads libnccl.so, and the nvidia-nccl-cu12/-cu13 wheels ship only
#   libnccl.so.2. When no libnccl.so is on LD_LIBRARY_PATH, the wheel's (the first on python3's
#   path) is linked as LINK_DIR/libnccl.so, and both folders go on LD_LIBRARY_PATH.
# - NVRTC's include dir: with no CUDA_PATH and no /usr/local/cuda/include/cuda.h, CUDA_PATH is
#   the toolkit that holds the nvcc on PATH.
gpu_env_link_dir=${1:?usage: source tests/gpu/gpu_env.sh LINK_DIR}
gpu_env_has_nccl=
# (check.sh runs under `set -u`, and a machine may have no LD_LIBRARY_PATH at all.)
gpu_env_ld=${LD_LIBRARY_PATH:-}
for gpu_env_dir in ${gpu_env_ld//:/ }; do
  [ -e "$gpu_env_dir/libnccl.so" ] && gpu_env_has_nccl=1
done
if [ -z "$gpu_env_has_nccl" ]; then
  gpu_env_so2=$(python3 - <<'PY' 2>/dev/null
import glob, os, site, sys
roots = sys.path + site.getsitepackages() + [site.getusersitepackages()]  # PYTHONPATH first
for root in roots:
    for path in glob.glob(os.path.join(root, "nvidia", "nccl", "lib", "libnccl.so.2")):
        print(path)
        sys.exit()
PY
)
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
unset gpu_env_link_dir gpu_env_has_nccl gpu_env_dir gpu_env_so2 gpu_env_ld
