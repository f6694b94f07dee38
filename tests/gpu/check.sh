#!/usr/bin/env bash
# The one-command GPU check: on one GPU, with CUDA, the NCCL wheel and a prebuilt
# `shard-train` built with `--features cuda` (nothing is built here), it trains and prints one table:
#   - the tiny fixture at world 1 on cuda: f32 full FT and LoRA (IEEE f32 matmuls: runtime.tf32 is
#     off, and each row names the matmul its run's summary.json records) against the CPU engine (losses
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
#   tests/gpu/check.sh [--cpu] [--world-2] [--dry-run]
#     --cpu      the tiny rows, world 2 (over MPI) and a throughput row of the tiny run on the CPU
#                (tests/gpu_check.rs runs it)
#     --world-2  adds the one-GPU world 2 row (on cuda it runs only when asked)
#     --dry-run  prints the rows, each with its time budget, and `total budget: N s`; runs nothing
#
# Rows run in the order that fails cheapest first: the tiny fixture at world 1 (f32 full FT, LoRA,
# full FT with MPI collectives), tiny bf16, then the 7B shapes (bf16 full FT, LoRA, QLoRA), then
# the PyTorch anchor (eager and SDPA attention). Each row has a time budget: its runs and steps are
# stopped when it is spent (a FAIL row), and a row starts only if its budget fits in what is left
# of BUDGET_S, so the check ends within BUDGET_S (default 420 s, the rows' sum) and fits a
# ten-minute command on a GPU rented by the minute.
#
# Env: SHARD_TRAIN (the binary; default target/release/shard-train), GPU (a planner preset,
# default h100-80gb), STEPS (7B-shape steps, default 3), OUT (work dir, default a temp dir),
# BUDGET_S (default 420), RUN_TIMEOUT (seconds one run may take instead of what is left of its
# row's budget), CACHES (a caches.tar.gz of an earlier check, unpacked before the first run so
# that its kernels are not compiled again).
# Results, at most four files in OUT: table.tsv (the table), logs.tar.gz (every run's log,
# config, metrics, summary and plan; no weights), caches.tar.gz (the kernel cache and cubecl's
# autotune cache, for CACHES next time), and check.txt when the caller tees the output there.
# On cuda the runs have RUST_BACKTRACE=1 and NCCL_DEBUG=WARN, so that a first failure says where.
# Status: written without a GPU; it has not run on one yet.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
bin=${SHARD_TRAIN:-$root/target/release/shard-train}
gpu=${GPU:-h100-80gb}
steps=${STEPS:-3}
budget=${BUDGET_S:-420}
device=cuda dry_run= world_2=
for arg in "$@"; do
  case $arg in
    --cpu) device=cpu ;;
    --dry-run) dry_run=1 ;;
    --world-2) world_2=1 ;;
    *) echo "unknown argument $arg (expected --cpu, --world-2, --dry-run)" >&2; exit 2 ;;
  esac
done
[ $device = cpu ] && world_2=1

# The rows, cheapest to fail first: FUNCTION BUDGET_S LABEL. The budgets are estimates made
# without a GPU (the first tiny cuda row compiles most kernels; the 7B rows start with ~3 s of
# random init, and QLoRA with writing and quantizing a checkpoint).
rows=()
add_row() { rows+=("$1|$2|$3"); }
# The f32 runs leave runtime.tf32 off: their matmuls are IEEE f32, not TF32 (the compare rows read
# it from each run's summary.json).
add_row tiny_full 75 "tiny full f32 (IEEE matmul)"
add_row tiny_lora 30 "tiny lora f32 (IEEE matmul)"
[ $device = cuda ] && add_row tiny_mpi 30 "tiny full f32 (IEEE matmul), MPI collectives"
add_row tiny_bf16 40 "tiny full bf16"
[ $device = cpu ] && add_row cpu_throughput 15 "tiny full f32 on cpu (the row's parsing)"
if [ $device = cuda ]; then
  add_row shapes_full 70 "7B shapes 4 layers full bf16"
  add_row shapes_lora 50 "7B shapes 4 layers lora bf16"
  add_row shapes_qlora 75 "7B shapes 4 layers qlora bf16"
  add_row anchor 50 "PyTorch anchor"
fi
[ -n "$world_2" ] && add_row world_2 45 "world 2 on one $device"

if [ -n "$dry_run" ]; then
  total=0
  for r in "${rows[@]}"; do
    IFS='|' read -r _ row_budget label <<< "$r"
    printf '%s\t%s s\n' "$label" "$row_budget"
    total=$((total + row_budget))
  done
  echo "total budget: $total s"
  exit 0
fi

out=${OUT:-$(mktemp -d)}
tiny=$root/tests/fixtures/tiny-mistral
mkdir -p "$out/runs" "$out/cache"
table=$out/table.tsv
: > "$table"
# The kernel cache (and, under HOME, cubecl's autotune cache) where the caches tarball finds them.
export XDG_CACHE_HOME=$out/cache
[ -n "${CACHES:-}" ] && tar xzf "$CACHES" -C "$out/cache"
# Every run's files in one folder, packed into logs.tar.gz at the end.
work=$out/runs

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
  python3 "$root/tests/gpu/report.py" tiny-config "$tiny" "$2" "$3" "$4" "$work/$1" "${5:-1}" > "$work/$1.toml"
}

# A row, added to the table and shown at once: one that report.py makes from a run's outputs,
# or one given as it is.
row() { python3 "$root/tests/gpu/report.py" "$@" | tee -a "$table"; }
table_row() { printf '%s\t%s\t%s\n' "$1" "$2" "$3" | tee -a "$table"; } # LABEL RESULT PASS|FAIL|INFO

# The seconds a run of the current row may take: RUN_TIMEOUT, else what is left of the row's budget.
run_limit() { echo "${RUN_TIMEOUT:-$((row_deadline > SECONDS ? row_deadline - SECONDS : 0))}"; }
limit_reason() { [ -n "${RUN_TIMEOUT:-}" ] && echo RUN_TIMEOUT || echo "the row's budget"; }

# Trains run NAME (on WORLD ranks through launch/local.sh, default 1 without mpirun) within
# run_limit; a failure is a FAIL row (its log's last lines are printed) and the check goes on.
train() { # NAME [WORLD]
  local world=${2:-1} status=0 limit
  limit=$(run_limit)
  echo "[${SECONDS} s] training $1 on $world rank(s)"
  if [ "$world" = 1 ]; then
    timeout "$limit" "$bin" train --config "$work/$1.toml" > "$work/$1.log" 2>&1 || status=$?
  else
    SHARD_TRAIN=$bin timeout "$limit" "$root/launch/local.sh" "$world" train --config "$work/$1.toml" > "$work/$1.log" 2>&1 || status=$?
  fi
  [ $status = 0 ] && return 0
  local why="training failed"
  [ $status = 124 ] && why="timed out after $limit s ($(limit_reason))"
  echo "--- $1: $why:"; tail -20 "$work/$1.log"
  table_row "$1" "$why (see runs/$1.log)" FAIL
  return 1
}

# Tiny fixture: the CPU engine's answer, then the same run on $device.
tiny_f32() { # MODE
  tiny_config "ref-$1" "$1" f32 cpu
  tiny_config "$device-$1" "$1" f32 $device
  if train "ref-$1" && train "$device-$1"; then
    row compare "tiny $1 f32 ({matmul} matmul), $device vs CPU" "$work/$device-$1/metrics.jsonl" "$work/ref-$1/metrics.jsonl" 1e-4
  fi
  return 0
}
row_tiny_full() {
  tiny_f32 full
  # Every cuda run's collectives go through NCCL (runtime.collectives' default), world 1's too.
  if [ $device = cuda ]; then
    local nccl
    nccl=$(sed -n 's/^collectives: NCCL \([0-9][0-9.]*\).*/\1/p' "$work/cuda-full.log" 2>/dev/null | head -1)
    if [ -n "$nccl" ]; then
      table_row "NCCL world 1" "NCCL $nccl carried the tiny cuda runs' collectives" PASS
    else
      table_row "NCCL world 1" "no 'collectives: NCCL' line in runs/cuda-full.log" FAIL
    fi
  fi
}
row_tiny_lora() { tiny_f32 lora; }
# The same run with its collectives over MPI through host buffers (what a run whose NCCL fails uses).
row_tiny_mpi() {
  tiny_config cuda-full-mpi full f32 cuda
  echo 'collectives = "mpi"' >> "$work/cuda-full-mpi.toml" # (the config ends in [runtime])
  if [ -e "$work/ref-full/metrics.jsonl" ] && train cuda-full-mpi; then
    row compare "tiny full f32 ({matmul} matmul), cuda with MPI collectives vs CPU" "$work/cuda-full-mpi/metrics.jsonl" "$work/ref-full/metrics.jsonl" 1e-4
  fi
  return 0
}
row_tiny_bf16() {
  tiny_config "$device-bf16" full bf16 $device
  if train "$device-bf16"; then
    row compare-bf16 "tiny full bf16, $device vs bf16 reference" "$work/$device-bf16/metrics.jsonl" "$tiny/bf16.json" full
  fi
  return 0
}
# World 2 on the one device (on cuda NCCL >= 2.30 allows two ranks on one GPU; on the CPU the
# collectives go over MPI): the same configs and comparison against world 1.
row_world_2() {
  local nccl
  nccl=$(sed -n 's/^collectives: NCCL \([0-9][0-9.]*\).*/\1/p' "$work/$device-full.log" 2>/dev/null | head -1)
  if ! command -v mpirun > /dev/null; then
    table_row "world 2 on one $device" "not run: no mpirun on PATH" INFO
  elif [ $device = cuda ] && [ "$(printf '%s\n' 2.30 "${nccl:-0}" | sort -V | head -1)" != 2.30 ]; then
    table_row "world 2 on one GPU" "not run: NCCL ${nccl:-unknown} < 2.30 refuses two ranks on one GPU" INFO
  else
    tiny_config "$device-full-w2" full f32 $device 2
    local one_gpu=${CUDA_VISIBLE_DEVICES:-0}
    if [ -e "$work/$device-full/metrics.jsonl" ] && NCCL_MULTI_RANK_GPU_ENABLE=1 CUDA_VISIBLE_DEVICES=${one_gpu%%,*} train "$device-full-w2" 2; then
      row compare "tiny full f32 ({matmul} matmul), world 2 vs world 1 on one $device" "$work/$device-full-w2/metrics.jsonl" "$work/$device-full/metrics.jsonl" 1e-4
    fi
  fi
}
# The throughput row's parts on the CPU: the tiny full run against its plan.
row_cpu_throughput() {
  [ -e "$work/cpu-full/metrics.jsonl" ] || return 0
  "$bin" plan --config "$work/cpu-full.toml" --json > "$work/cpu-full.plan.json"
  row throughput "tiny full f32 on cpu (the row's parsing)" "$work/cpu-full/metrics.jsonl" "$work/cpu-full.plan.json"
}
# Mistral-7B shapes with 4 of 32 layers: tokens/s and memory next to the plan.
shapes() { # MODE
  local name=7b4-$1
  python3 "$root/tests/gpu/report.py" shapes-config "$root/tests/fixtures/mistral-7b-v0.1/config.json" "$1" "$gpu" "$steps" "$work" > "$work/$name.toml"
  "$bin" plan --config "$work/$name.toml" --json > "$work/$name.plan.json"
  if train "$name"; then
    row throughput "7B shapes 4 layers $1 bf16" "$work/$name/metrics.jsonl" "$work/$name.plan.json"
  fi
  return 0
}
row_shapes_full() { shapes full; }
row_shapes_lora() { shapes lora; }
# QLoRA quantizes a checkpoint's base at load: a random one is written first (on the GPU, by torch).
row_shapes_qlora() {
  echo "[${SECONDS} s] writing a random 7B-shape checkpoint for QLoRA"
  python3 "$root/tests/gpu/report.py" shapes-config "$root/tests/fixtures/mistral-7b-v0.1/config.json" qlora "$gpu" "$steps" "$work" > "$work/7b4-qlora.toml"
  if ! timeout "$(run_limit)" python3 "$root/tests/gpu/report.py" shapes-checkpoint "$work/7b4-model" > "$work/7b4-checkpoint.log" 2>&1; then
    table_row "7B shapes 4 layers qlora bf16" "the random checkpoint was not written in time (see runs/7b4-checkpoint.log)" FAIL
    return 0
  fi
  shapes qlora
}
row_anchor() {
  echo "[${SECONDS} s] the PyTorch anchor"
  local limit
  limit=$(run_limit)
  timeout "$limit" python3 "$root/tests/gpu/report.py" torch-anchor "$work/7b4-model/config.json" 4096 "$steps" | tee -a "$table" \
    || table_row "PyTorch anchor" "failed or timed out after $limit s ($(limit_reason))" FAIL
}

for r in "${rows[@]}"; do
  IFS='|' read -r function row_budget label <<< "$r"
  # A row starts only if its budget fits in what is left of the check's.
  if [ $((SECONDS + row_budget)) -gt "$budget" ]; then
    table_row "$label" "not run: the check's time budget (BUDGET_S = $budget s) is spent" INFO
    continue
  fi
  row_deadline=$((SECONDS + row_budget))
  "row_$function"
done

echo "[${SECONDS} s] done"
# The results that come back: the table, the runs' small files, the caches.
tar czf "$out/logs.tar.gz" -C "$work" --exclude='*.safetensors' --exclude='*.bin' --exclude=7b4-data.jsonl --exclude='checkpoint-*' .
caches=(-C "$out/cache" .)
[ -d "$HOME/.cache/cubecl" ] && caches+=(-C "$HOME/.cache" cubecl)
tar czf "$out/caches.tar.gz" "${caches[@]}"
python3 "$root/tests/gpu/report.py" table "$table"
echo "results: $table $out/logs.tar.gz $out/caches.tar.gz"
! grep -q $'\tFAIL' "$table"
