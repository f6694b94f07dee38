#!/usr/bin/env bash
# The one-command GPU check: on one GPU, with CUDA, the NCCL wheel and a prebuilt
# `shard-train` built with `--features cuda` (nothing is built here), it trains and prints one table:
#   - the tiny fixture at world 1 on cuda: f32 full FT and LoRA against the CPU engine (losses
#     and grad norms within 1e-4), bf16 full FT against the bf16 reference (within 3x its
#     rebatching spread, tests/fixtures/tiny-mistral/bf16.json);
#   - the NCCL path: every cuda run's collectives go through NcclCollective, world 1 included
#     (the row names the NCCL version the runs logged); world 2 on the one GPU
#     (NCCL_MULTI_RANK_GPU_ENABLE=1, NCCL >= 2.30, mpirun on PATH) against world 1 within 1e-4;
#   - Mistral-7B shapes with 4 of 32 layers (random init), seq 4096, bf16, full FT and LoRA r=16:
#     tokens/s, MFU (the planner's FLOPs per token against the GPU's bf16 peak), exposed
#     communication, the engine's peak bytes, cubecl's pool and cuMemGetInfo's used bytes (the
#     most seen after a step), next to `shard-train plan`'s prediction for the same run;
#   - the same 4-layer model in PyTorch on the same GPU (tokens/s), the anchor.
# World 1 runs without mpirun (MPI singleton init); the binary still needs OpenMPI's libmpi.so.40
# and libnccl.so (cuda runs refuse to start without it): tests/gpu/gpu_env.sh links the NCCL
# wheel's libnccl.so.2 as libnccl.so and finds the CUDA toolkit when they are not in place. Where OpenMPI is missing, tests/gpu/bundle.sh (run here) makes gpu-bundle/ with
# the stripped binary and Debian's OpenMPI runtime; there: source gpu-bundle/env.sh && tests/gpu/check.sh
#
#   tests/gpu/check.sh [--cpu]     # --cpu: the tiny rows, world 2 (over MPI) and a throughput
#                                  # row of the tiny run on the CPU (tests/cli_inputs.rs runs it)
#
# Env: SHARD_TRAIN (the binary; default target/release/shard-train), GPU (a planner preset,
# default h100-80gb), STEPS (7B-shape steps, default 3), OUT (work dir, default a temp dir),
# RUN_TIMEOUT (seconds one training run may take, default 120), BUDGET_S (the check starts no
# new run after this many seconds, default 300: with RUN_TIMEOUT the check ends within 420 s, so
# that it fits a ten-minute command on a GPU rented by the minute). Rows are printed as they come, then the table.
# On cuda the runs have RUST_BACKTRACE=1 and NCCL_DEBUG=WARN, so that a first failure says where.
# Status: written without a GPU; it has not run on one yet.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
bin=${SHARD_TRAIN:-$root/target/release/shard-train}
gpu=${GPU:-h100-80gb}
steps=${STEPS:-3}
out=${OUT:-$(mktemp -d)}
run_timeout=${RUN_TIMEOUT:-120}
budget=${BUDGET_S:-300}
device=cuda
[ "${1:-}" = --cpu ] && device=cpu
tiny=$root/tests/fixtures/tiny-mistral
mkdir -p "$out"
table=$out/table.tsv
: > "$table"

if [ $device = cuda ]; then
  source "$root/tests/gpu/gpu_env.sh" "$out/lib"
  export RUST_BACKTRACE=1 NCCL_DEBUG=WARN
fi

missing=$(ldd "$bin" 2>/dev/null | grep 'not found' || true)
if [ -n "$missing" ]; then
  echo "$bin cannot start, libraries not found (see the comment at the top of $0):"; echo "$missing"
  exit 1
fi

# A run config for the tiny fixture (its reference.json hyper-parameters) on $device, for WORLD
# ranks (default 1) sharing one step's examples.
tiny_config() { # NAME MODE(full|lora) DTYPE DEVICE [WORLD]
  python3 "$root/tests/gpu/report.py" tiny-config "$tiny" "$2" "$3" "$4" "$out/$1" "${5:-1}" > "$out/$1.toml"
}

# A row, added to the table and shown at once: one that report.py makes from a run's outputs,
# or one given as it is.
row() { python3 "$root/tests/gpu/report.py" "$@" | tee -a "$table"; }
table_row() { printf '%s\t%s\t%s\n' "$1" "$2" "$3" | tee -a "$table"; } # LABEL RESULT PASS|FAIL|INFO

# Trains run NAME (on WORLD ranks through launch/local.sh, default 1 without mpirun), for at
# most RUN_TIMEOUT seconds; a failure is a FAIL row (its log's last lines are printed) and the
# check goes on.
train() { # NAME [WORLD]
  local world=${2:-1} status=0
  # No run starts past the budget: one started before it ends within RUN_TIMEOUT.
  if [ "$SECONDS" -ge "$budget" ]; then
    table_row "$1" "not run: the check's time budget (BUDGET_S = $budget s) is spent" INFO
    return 1
  fi
  echo "[${SECONDS} s] training $1 on $world rank(s)"
  if [ "$world" = 1 ]; then
    timeout "$run_timeout" "$bin" train --config "$out/$1.toml" > "$out/$1.log" 2>&1 || status=$?
  else
    SHARD_TRAIN=$bin timeout "$run_timeout" "$root/launch/local.sh" "$world" train --config "$out/$1.toml" > "$out/$1.log" 2>&1 || status=$?
  fi
  [ $status = 0 ] && return 0
  local why="training failed"
  [ $status = 124 ] && why="timed out after $run_timeout s (RUN_TIMEOUT)"
  echo "--- $1: $why:"; tail -20 "$out/$1.log"
  table_row "$1" "$why (see $out/$1.log)" FAIL
  return 1
}

# Whether the time budget allows another row LABEL; if not, an INFO row says it was not run.
in_budget() { # LABEL
  [ "$SECONDS" -lt "$budget" ] && return 0
  table_row "$1" "not run: the check's time budget (BUDGET_S = $budget s) is spent" INFO
  return 1
}

# Tiny fixture: the CPU engine's answer, then the same run on $device.
for mode in full lora; do
  in_budget "tiny $mode f32" || continue
  tiny_config "ref-$mode" $mode f32 cpu
  tiny_config "$device-$mode" $mode f32 $device
  if train "ref-$mode" && train "$device-$mode"; then
    row compare "tiny $mode f32, $device vs CPU" "$out/$device-$mode/metrics.jsonl" "$out/ref-$mode/metrics.jsonl" 1e-4
  fi
done
tiny_config "$device-bf16" full bf16 $device
if in_budget "tiny full bf16" && train "$device-bf16"; then
  row compare-bf16 "tiny full bf16, $device vs bf16 reference" "$out/$device-bf16/metrics.jsonl" "$tiny/bf16.json" full
fi

# NCCL: world 1 is every cuda run above; world 2 shares the one GPU where NCCL allows it (on the
# CPU, world 2 runs over MPI: the same configs and comparison).
nccl=
if [ $device = cuda ]; then
  nccl=$(sed -n 's/^collectives: NCCL \([0-9][0-9.]*\).*/\1/p' "$out/cuda-full.log" | head -1)
  if [ -n "$nccl" ]; then
    table_row "NCCL world 1" "NCCL $nccl carried the tiny cuda runs' collectives" PASS
  else
    table_row "NCCL world 1" "no 'collectives: NCCL' line in $out/cuda-full.log" FAIL
  fi
fi
if ! command -v mpirun > /dev/null; then
  table_row "world 2 on one $device" "not run: no mpirun on PATH" INFO
elif [ $device = cuda ] && [ "$(printf '%s\n' 2.30 "${nccl:-0}" | sort -V | head -1)" != 2.30 ]; then
  table_row "world 2 on one GPU" "not run: NCCL ${nccl:-unknown} < 2.30 refuses two ranks on one GPU" INFO
elif in_budget "world 2 on one $device"; then
  tiny_config "$device-full-w2" full f32 $device 2
  one_gpu=${CUDA_VISIBLE_DEVICES:-0}
  if [ -e "$out/$device-full/metrics.jsonl" ] && NCCL_MULTI_RANK_GPU_ENABLE=1 CUDA_VISIBLE_DEVICES=${one_gpu%%,*} train "$device-full-w2" 2; then
    row compare "tiny full f32, world 2 vs world 1 on one $device" "$out/$device-full-w2/metrics.jsonl" "$out/$device-full/metrics.jsonl" 1e-4
  fi
fi

# The throughput row's parts on the CPU: the tiny full run against its plan.
if [ $device = cpu ] && [ -e "$out/cpu-full/metrics.jsonl" ]; then
  "$bin" plan --config "$out/cpu-full.toml" --json > "$out/cpu-full.plan.json"
  row throughput "tiny full f32 on cpu (the row's parsing)" "$out/cpu-full/metrics.jsonl" "$out/cpu-full.plan.json"
fi

if [ $device = cuda ]; then
  for mode in full lora; do
    name=7b4-$mode
    in_budget "7B shapes 4 layers $mode bf16" || continue
    python3 "$root/tests/gpu/report.py" shapes-config "$root/tests/fixtures/mistral-7b-v0.1/config.json" $mode "$gpu" "$steps" "$out" > "$out/$name.toml"
    "$bin" plan --config "$out/$name.toml" --json > "$out/$name.plan.json"
    if train "$name"; then
      row throughput "7B shapes 4 layers $mode bf16" "$out/$name/metrics.jsonl" "$out/$name.plan.json"
    fi
  done
  if in_budget "PyTorch anchor"; then
    echo "[${SECONDS} s] the PyTorch anchor"
    timeout "$run_timeout" python3 "$root/tests/gpu/report.py" torch-anchor "$out/7b4-model/config.json" 4096 "$steps" | tee -a "$table" \
      || table_row "PyTorch anchor" "failed or timed out (RUN_TIMEOUT = $run_timeout s)" FAIL
  fi
fi

echo "[${SECONDS} s] done"
python3 "$root/tests/gpu/report.py" table "$table"
! grep -q $'\tFAIL' "$table"
