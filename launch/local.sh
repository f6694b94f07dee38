#!/usr/bin/env bash
# Runs shard-train with N ranks on this machine: launch/local.sh [--dry-run] N --config FILE.toml
# Adds what OpenMPI needs here (see common.sh), and --oversubscribe when there are more ranks than
# cores. --dry-run prints the mpirun command line instead of running it.
set -euo pipefail
source "$(dirname "$0")/common.sh"
take_dry_run "$@"
set -- "${LAUNCH_ARGS[@]}"
[ $# -ge 1 ] || refuse "usage: launch/local.sh [--dry-run] N shard-train-args... (N: the number of ranks)"
ranks=$1
shift
[[ $ranks =~ ^[1-9][0-9]*$ ]] || refuse "N = \"$ranks\": expected a number of ranks >= 1"
mapfile -t flags < <(mpirun_flags)
[ "$ranks" -gt "$(nproc)" ] && flags+=(--oversubscribe)
run_or_print mpirun -n "$ranks" "${flags[@]}" "$(shard_train_binary)" "$@"
