#!/usr/bin/env bash
# Runs shard-train on the machines of an OpenMPI hostfile, one rank per slot (per GPU):
#   launch/hostfile.sh [--dry-run] [-n RANKS] HOSTFILE --config FILE.toml [shard-train flags]
# RANKS defaults to the hostfile's slots; more ranks than slots is refused. Every machine needs
# the binary at the same path (see common.sh), OpenMPI, and ssh from here without a password;
# output.dir must be on a file system every machine sees (shard-train checks at start-up).
# The environment reaching the ranks is listed in common.sh (forwarded_env_flags); export NCCL_*
# settings here and they arrive on every machine. --dry-run prints the mpirun line instead.
set -euo pipefail
source "$(dirname "$0")/common.sh"
usage="usage: launch/hostfile.sh [--dry-run] [-n RANKS] HOSTFILE shard-train-args..."
ranks=""
take_dry_run "$@"
set -- "${LAUNCH_ARGS[@]}"
if [ "${1:-}" = -n ]; then
  [ $# -ge 2 ] || refuse "$usage"
  ranks=$2
  shift 2
fi
[ $# -ge 1 ] || refuse "$usage"
hostfile=$1
shift
[ -f "$hostfile" ] || refuse "hostfile $hostfile: no such file"

# Slots per line: "host slots=N" (comments after #; max_slots=M is OpenMPI's cap, not the slots). A line without slots= would get as many
# ranks as the machine has cores, not one per GPU: refused.
slots=0
line_number=0
while IFS= read -r line || [ -n "$line" ]; do
  line_number=$((line_number + 1))
  line=${line%%#*}
  [ -z "${line// /}" ] && continue
  if [[ $line =~ (^|[[:space:]])slots[[:space:]]*=[[:space:]]*([0-9]+) ]]; then
    slots=$((slots + BASH_REMATCH[2]))
  else
    refuse "$hostfile:$line_number: \"$line\" names no slots; expected \"HOST slots=N\" with N = its GPUs (one rank per GPU)"
  fi
done < "$hostfile"
[ "$slots" -gt 0 ] || refuse "hostfile $hostfile names no machine (expected lines \"HOST slots=N\")"

ranks=${ranks:-$slots}
[[ $ranks =~ ^[1-9][0-9]*$ ]] || refuse "-n $ranks: expected a number of ranks >= 1"
if [ "$ranks" -gt "$slots" ]; then
  refuse "-n $ranks ranks, but hostfile $hostfile names $slots slots: add machines or slots (one per GPU), or run fewer ranks"
fi

mapfile -t flags < <(mpirun_flags)
mapfile -t env_flags < <(forwarded_env_flags)
run_or_print mpirun -n "$ranks" --hostfile "$hostfile" "${flags[@]}" "${env_flags[@]}" "$(shard_train_binary)" "$@"
