# Sourced by the launch scripts: which binary runs, the mpirun flags every launch needs, the
# environment every rank gets, and --dry-run (print the command line instead of running it).

# mpirun's output reaches this script's terminal, if it has one, but each rank's stderr is a pipe
# to mpirun: tell the ranks, so that rank 0 draws its progress bar (train --progress auto).
if [ -t 2 ] && [ -z "${SHARD_TRAIN_TERMINAL+set}" ]; then
  export SHARD_TRAIN_TERMINAL=1
fi

# The shard-train binary every rank runs: $SHARD_TRAIN, else shard-train on PATH (cargo install
# --path crates/cli), else this checkout's target/release/shard-train. On several machines the
# path must exist on each of them (a shared file system, or the same install everywhere).
shard_train_binary() {
  local repo
  repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
  if [ -n "${SHARD_TRAIN:-}" ]; then
    echo "$SHARD_TRAIN"
  elif command -v shard-train >/dev/null; then
    command -v shard-train
  else
    echo "$repo/target/release/shard-train"
  fi
}

# Flags for OpenMPI's mpirun on any number of machines:
# - --allow-run-as-root when run as root (containers);
# - --map-by slot: ranks fill one machine's slots before the next, so a machine's ranks are
#   consecutive (local rank r drives GPU r);
# - --bind-to none: OpenMPI binds each rank to a core (2 ranks or fewer) or a socket by default,
#   and a rank bound to one core computes on one thread; shard-train shares a machine's cores
#   between its ranks itself.
mpirun_flags() {
  [ "$(id -u)" = 0 ] && printf '%s\n' --allow-run-as-root
  printf '%s\n' --map-by slot --bind-to none
}

# `-x NAME` for each variable set here that the ranks need: PATH and LD_LIBRARY_PATH, and every
# NCCL_*, CUDA_*, SHARD_TRAIN_*, RAYON_*, OMP_*, RUST_*, MIMALLOC_* variable. mpirun starts remote
# ranks through ssh with a bare environment, so what is not named does not arrive there.
forwarded_env_flags() {
  local name
  for name in PATH LD_LIBRARY_PATH; do
    [ -n "${!name:-}" ] && printf '%s\n' -x "$name"
  done
  compgen -e | grep -E '^(NCCL|CUDA|SHARD_TRAIN|RAYON|OMP|RUST|MIMALLOC)_' | while read -r name; do
    printf '%s\n' -x "$name"
  done
}

# Runs "$@", or with DRY_RUN=1 prints it, one shell-quoted line.
run_or_print() {
  if [ "${DRY_RUN:-0}" = 1 ]; then
    printf '%q ' "$@" | sed 's/ $//'
    echo
  else
    run_with_graceful_stop "$@"
  fi
}

# Runs the launcher "$@" (mpirun, srun) so that Ctrl-C saves: a terminal sends SIGINT to its
# whole foreground process group, and mpirun answers SIGINT (or SIGTERM) by killing the ranks
# within a second, racing their own "save and stop" handler. So the launcher runs in a session of
# its own, out of the terminal's reach, and this script turns the first SIGINT or SIGTERM into
# SIGUSR1, which mpirun forwards to every rank (finish the step, save, exit 0); a second one
# stops at once (SIGTERM to the launcher). Its exit code is this script's.
run_with_graceful_stop() {
  local pid= code stops=0
  on_stop() {
    stops=$((stops + 1))
    if [ "$stops" = 1 ]; then
      echo "$(basename "$0"): stopping after the current step and saving (press Ctrl-C again to stop at once, without saving)" >&2
      kill -USR1 "$pid" 2>/dev/null || true
    else
      echo "$(basename "$0"): stopping now, without saving" >&2
      kill -TERM "$pid" 2>/dev/null || true
    fi
  }
  # The trap is set before the launcher starts: a Ctrl-C however early finds it (under load the
  # ranks may train a step before this shell runs its next line).
  trap on_stop INT TERM
  setsid "$@" &
  pid=$!
  # `wait` returns early when a trapped signal arrives: wait again until the launcher has ended.
  while true; do
    code=0
    wait "$pid" || code=$?
    kill -0 "$pid" 2>/dev/null || break
  done
  trap - INT TERM
  return "$code"
}

# --dry-run is taken wherever it stands among the arguments (shard-train has no flag of that
# name): sets DRY_RUN=1 and leaves the other arguments, in order, in LAUNCH_ARGS.
take_dry_run() {
  local arg
  LAUNCH_ARGS=()
  for arg in "$@"; do
    if [ "$arg" = --dry-run ]; then DRY_RUN=1; else LAUNCH_ARGS+=("$arg"); fi
  done
}

# Prints "launch/NAME: MESSAGE" on stderr and exits 2 (a usage error: nothing was started).
refuse() {
  echo "$(basename "$0"): $*" >&2
  exit 2
}
