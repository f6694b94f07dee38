#!/usr/bin/env bash
# Runs shard-train with N ranks on this machine: launch/local.sh N train --config FILE.toml
# Adds what OpenMPI needs here: --allow-run-as-root as root, --oversubscribe when there are more
# ranks than cores. Uses target/release/shard-train (cargo build --release) unless SHARD_TRAIN is set.
set -euo pipefail
ranks=${1:?usage: launch/local.sh N shard-train-args...}
shift
here=$(cd "$(dirname "$0")/.." && pwd)
bin=${SHARD_TRAIN:-$here/target/release/shard-train}
flags=(-n "$ranks")
[ "$(id -u)" = 0 ] && flags+=(--allow-run-as-root)
[ "$ranks" -gt "$(nproc)" ] && flags+=(--oversubscribe)
exec mpirun "${flags[@]}" "$bin" "$@"
