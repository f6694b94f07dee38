#!/usr/bin/env bash
# Prepares what tests/gpu/check.sh needs on a GPU machine that has CUDA, torch and the NCCL wheel
# but no OpenMPI, in one folder small enough to copy there (at most
# 64 MiB): gpu-bundle/ (git-ignored) with
#   - shard-train.gz: the release binary built with --features cuda, stripped and gzipped (36 MB
#     becomes 9), unpacked by env.sh;
#   - openmpi/: Debian's OpenMPI runtime (libopenmpi3, openmpi-bin and the libraries they load)
#     unpacked with `dpkg -x`, so that the binary finds libmpi.so.40 and mpirun runs world 2;
#   - env.sh: `source gpu-bundle/env.sh` points LD_LIBRARY_PATH, PATH and OPAL_PREFIX there and
#     sets SHARD_TRAIN for check.sh.
#
#   tests/gpu/bundle.sh            # then, on the GPU machine: source gpu-bundle/env.sh && tests/gpu/check.sh
#
# Needs apt-get (to download the .deb files; nothing is installed) and a cargo build.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=gpu-bundle
rm -rf "$out"
mkdir -p "$out/openmpi"

cargo build --release --features cuda -p shard-train
strip -o "$out/shard-train" target/release/shard-train
gzip -9 "$out/shard-train"

# The runtime libmpi.so.40 loads, its plugins' libraries (missing ones are skipped by OpenMPI),
# and openmpi-bin for mpirun / orted.
packages=(libopenmpi3 openmpi-bin openmpi-common libpmix2 libevent-core-2.1-7 libevent-pthreads-2.1-7 libhwloc15 libfabric1 libucx0 libnuma1 libmunge2)
debs=$(mktemp -d)
trap 'rm -rf "$debs"' EXIT
(cd "$debs" && apt-get download "${packages[@]}" 2>/dev/null)
for deb in "$debs"/*.deb; do dpkg -x "$deb" "$out/openmpi"; done
rm -rf "$out/openmpi/usr/share/doc" "$out/openmpi/usr/share/man"
# Debian names mpirun through update-alternatives, which `dpkg -x` does not run.
ln -s orterun "$out/openmpi/usr/bin/mpirun"

cat > "$out/env.sh" <<'ENV'
# Sourced on the GPU machine: the bundled shard-train and OpenMPI, wherever this folder lies.
bundle=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
[ -x "$bundle/shard-train" ] || { gzip -dkc "$bundle/shard-train.gz" > "$bundle/shard-train" && chmod +x "$bundle/shard-train"; }
export OPAL_PREFIX=$bundle/openmpi/usr
export LD_LIBRARY_PATH=$bundle/openmpi/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export PATH=$bundle/openmpi/usr/bin:$PATH
export SHARD_TRAIN=$bundle/shard-train
ENV
du -sh "$out"
