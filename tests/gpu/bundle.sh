#!/usr/bin/env bash
# Prepares what tests/gpu/check.sh needs on a GPU machine that has CUDA, torch and the NCCL wheel
# but no OpenMPI, in one folder small enough to copy there (at most
# 64 MiB): gpu-bundle/ (git-ignored) with
#   - shard-train.gz: the release binary built with --features cuda, stripped and gzipped (36 MB
#     becomes 9), unpacked by env.sh;
#   - openmpi/: Debian's OpenMPI runtime (libopenmpi3, openmpi-bin, libudev1 and every library
#     that `ldd` shows the binary and mpirun load, but the C runtime's) unpacked with `dpkg -x`,
#     so that the binary finds libmpi.so.40 and mpirun runs world 2;
#   - env.sh: `source gpu-bundle/env.sh` points LD_LIBRARY_PATH, PATH and OPAL_PREFIX there, sets
#     SHARD_TRAIN for check.sh, and keeps OpenMPI to its shared-memory and self transports
#     (OMPI_MCA_pml=ob1, OMPI_MCA_btl=self,vader: one machine; no UCX or fabric probing).
#
#   tests/gpu/bundle.sh            # then, on the GPU machine: source gpu-bundle/env.sh && tests/gpu/check.sh
#
# Env: SHARD_TRAIN (a binary to bundle instead of building the cuda one), BUNDLE_DIR (default
# gpu-bundle). tests/gpu_check.rs checks that the bundle resolves every library by itself.
# Needs apt-get (to download the .deb files; nothing is installed) and a cargo build.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${BUNDLE_DIR:-gpu-bundle}
rm -rf "$out"
mkdir -p "$out/openmpi"

bin=${SHARD_TRAIN:-}
if [ -z "$bin" ]; then
  cargo build --release --features cuda -p shard-train
  bin=target/release/shard-train
fi
strip -o "$out/shard-train" "$bin"
gzip -9 "$out/shard-train"

# The Debian packages of the libraries FILES load (ldd), but the C runtime (libc6, libgcc-s1),
# which every machine has in a version its own tools need.
packages_loaded_by() { # FILES...
  ldd "$@" | awk '$2 == "=>" && $3 ~ /^\// {print $3}' | sort -u | while read -r lib; do
    real=$(readlink -f "$lib")
    # (merged /usr: dpkg knows each file under one of its two names)
    for name in "$lib" "$real" "/usr$lib" "/usr$real"; do
      dpkg -S "$name" 2>/dev/null && break
    done
  done | cut -d: -f1 | sort -u | grep -vx -e libc6 -e libgcc-s1
}

# The runtime libmpi.so.40 loads, its plugins' libraries (missing ones are skipped by OpenMPI),
# openmpi-bin for mpirun / orted, libudev1 (libhwloc's), and what ldd shows besides.
packages=(libopenmpi3 openmpi-bin openmpi-common libpmix2 libevent-core-2.1-7 libevent-pthreads-2.1-7 libhwloc15 libfabric1 libucx0 libnuma1 libmunge2 libudev1)
mapfile -t loaded < <(packages_loaded_by "$bin" "$(readlink -f "$(command -v mpirun)")")
mapfile -t packages < <(printf '%s\n' "${packages[@]}" "${loaded[@]}" | sort -u)
debs=$(mktemp -d)
trap 'rm -rf "$debs"' EXIT
(cd "$debs" && apt-get download "${packages[@]}" 2> /dev/null)
echo "bundled: ${packages[*]}"
for deb in "$debs"/*.deb; do dpkg -x "$deb" "$out/openmpi"; done
rm -rf "$out/openmpi/usr/share/doc" "$out/openmpi/usr/share/man"
# Debian names mpirun through update-alternatives, which `dpkg -x` does not run.
ln -s orterun "$out/openmpi/usr/bin/mpirun"

cat > "$out/env.sh" <<'ENV'
# Sourced on the GPU machine: the bundled shard-train and OpenMPI, wherever this folder lies.
bundle=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
[ -x "$bundle/shard-train" ] || { gzip -dkc "$bundle/shard-train.gz" > "$bundle/shard-train" && chmod +x "$bundle/shard-train"; }
export OPAL_PREFIX=$bundle/openmpi/usr
# (some packages, zlib1g's, ship their library under /lib)
export LD_LIBRARY_PATH=$bundle/openmpi/usr/lib/x86_64-linux-gnu:$bundle/openmpi/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export PATH=$bundle/openmpi/usr/bin:$PATH
export SHARD_TRAIN=$bundle/shard-train
export OMPI_MCA_pml=ob1 OMPI_MCA_btl=self,vader
ENV
du -sh "$out"
