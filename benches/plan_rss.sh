#!/usr/bin/env bash
# The planner against the trainer on CPU: predicted vs measured peak RSS per rank.
#
#   benches/plan_rss.sh              # presets small and medium at world 1, 2 and 4
#   benches/plan_rss.sh calibrate    # the tiny fixture at world 1, 2 and 4: the process baseline
#   PRESETS=small WORLDS="1 2" STEPS=3 DTYPE=bf16 benches/plan_rss.sh
#   MODE=lora benches/plan_rss.sh    # or MODE=qlora: r = 16, alpha = 32 on q, k, v, o
#
# Needs `cargo build --release -p shard-train`. Each run is benches/fsdp_compare.sh's: random init,
# random tokens, 2 sequences of 256 tokens per rank per step, full fine-tuning (or MODE); 3 steps,
# so that AdamW's m and v are resident (the optimizer first writes them at the end of step 1).
# QLoRA quantizes a checkpoint at load: each preset's random-init base is exported once first
# (one step at lr = 0), as benches/qlora_vs_zero3.sh does.
# Prediction: `shard-train plan --config run.toml --ranks N --json`, per_rank_bytes.total.
# Measured: summary.json's peak_rss_bytes (getrusage ru_maxrss of each rank after its steps).
# Medium at world 1 needs about 4 GB of memory and a few minutes on 2 cores.
set -euo pipefail
source "$(dirname "$0")/common.sh"
steps=${STEPS:-3}
dtype=${DTYPE:-f32}
mode=${MODE:-full}

# The [model] lines of MODE's runs of preset CONFIG_JSON: random init, or for QLoRA the base
# exported once per preset.
model_lines() { # CONFIG_JSON
  local config=$1
  if [ "$mode" != qlora ]; then
    printf 'init = "random"\nconfig = "%s"\n' "$config"
    return
  fi
  local base="$work/base-$(basename "$(dirname "$config")")"
  if [ ! -d "$base/out/final" ]; then
    mkdir -p "$base"
    python3 "$here/benches/random_tokens.py" 1 8 100 > "$base/data.jsonl"
    printf '[model]\ninit = "random"\nconfig = "%s"\n[data]\npath = "data.jsonl"\nseq_len = 8\n[train]\nsteps = 1\nlr = 0.0\n[output]\ndir = "out"\nexport = "hf"\n' \
      "$config" > "$base/run.toml"
    "$bin" train --config "$base/run.toml" > "$base/log" 2>&1 || { cat "$base/log" >&2; exit 1; }
  fi
  printf 'path = "%s"\n' "$base/out/final"
}

# run CONFIG_JSON WORLD SEQ MICRO_BATCH: trains, plans, prints one JSON line.
run() {
  local config=$1 world=$2 seq=$3 mb=$4 dir="$work/$RANDOM"
  local model
  model=$(model_lines "$config")
  mkdir -p "$dir"
  local vocab
  vocab=$(vocab_of "$config")
  python3 "$here/benches/random_tokens.py" $((steps * mb * world)) "$seq" "$vocab" > "$dir/data.jsonl"
  cat > "$dir/run.toml" <<TOML
[model]
$model
dtype = "$dtype"
[data]
path = "data.jsonl"
seq_len = $seq
shuffle = false
[train]
mode = "$mode"
steps = $steps
micro_batch_size = $mb
lr = 1e-4
betas = [0.9, 0.95]
weight_decay = 0.1
[lora]
r = 16
alpha = 32
[output]
dir = "run"
export = "none"
TOML
  train_ranks "$world" "$dir/run.toml" "$dir/log"
  "$bin" plan --config "$dir/run.toml" --ranks "$world" --json > "$dir/plan.json"
  python3 - "$dir" <<'PY'
import json, sys
d = sys.argv[1]
plan = json.load(open(f"{d}/plan.json"))["strategies"][0]
summary = json.load(open(f"{d}/run/summary.json"))
print(json.dumps({"predicted": plan["per_rank_bytes"], "peak_at": plan["peak_at"], "measured": summary["peak_rss_bytes"]}))
PY
}

mib() { python3 -c "print(f'{$1 / 2**20:.0f}')"; }

if [ "${1:-}" = calibrate ]; then
  echo "tiny fixture: measured peak RSS, the plan without its CPU runtime overhead, their difference (MiB)"
  for world in 1 2 4; do
    run "$here/tests/fixtures/tiny-mistral/config.json" "$world" 24 2 | python3 -c "
import json, sys
r = json.loads(sys.stdin.read()); b = r['predicted']
engine = b['total'] - b['overhead']
for rank, rss in enumerate(r['measured']):
    print(f'world $world rank {rank}: RSS {rss / 2**20:6.1f}  engine {engine / 2**20:5.1f}  process {(rss - engine) / 2**20:6.1f}')"
  done
  exit 0
fi

echo "model.dtype = $dtype, train.mode = $mode"
printf "%-7s %5s  %10s  %-28s  %s\n" preset world "predicted" "measured per rank (MiB)" "error per rank"
for preset in ${PRESETS:-small medium}; do
  for world in ${WORLDS:-1 2 4}; do
    run "$here/tests/fixtures/presets/$preset/config.json" "$world" 256 2 | python3 -c "
import json, sys
r = json.loads(sys.stdin.read())
p = r['predicted']['total']
measured = r['measured']
errors = ' '.join(f'{(p - m) / m * 100:+.1f}%' for m in measured)
print(f\"{'$preset':<7} {$world:>5}  {p / 2**20:>10.0f}  {' '.join(f'{m / 2**20:.0f}' for m in measured):<28}  {errors}   (peak at {r['peak_at']})\")"
  done
done
