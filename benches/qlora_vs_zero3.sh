#!/usr/bin/env bash
# Sharded full fine-tuning vs single-GPU QLoRA, on the same base, data and steps:
# (a) ZeRO-3 full FT on N ranks, (b) LoRA on N ranks, (c) QLoRA on 1 rank.
#
#   benches/qlora_vs_zero3.sh PRESET [N=2] [STEPS=6]     # PRESET: tests/fixtures/presets/PRESET
#   DTYPE=bf16 LR=1e-4 CHART=FILE.svg benches/qlora_vs_zero3.sh small 2
#
# Needs `cargo build --release -p shard-train`. The base is a random-init checkpoint of the preset,
# written once by the trainer itself (init = "random", lr = 0 for one step, export = "hf"), so
# that QLoRA has a model.path to quantize at load. Every step trains the same 2N sequences of 256
# random tokens (benches/random_tokens.py): 2 per rank on N ranks, 2 per micro-batch x N
# accumulated on 1 rank. Every run: lr LR (default 1e-4, constant), AdamW betas (0.9, 0.95),
# weight decay 0.1, clipping at 1.0; LoRA and QLoRA r = 16, alpha = 32 on q, k, v, o. Prints one
# table (its columns: docs/nf4-qlora.md's "Sharded full fine-tuning vs single-GPU QLoRA") and draws the
# loss curves into CHART.
set -euo pipefail
preset=${1:?usage: benches/qlora_vs_zero3.sh PRESET [N=2] [STEPS=6]}
world=${2:-2}
steps=${3:-6}
dtype=${DTYPE:-f32}
lr=${LR:-1e-4}
source "$(dirname "$0")/common.sh"
chart=${CHART:-$here/target/qlora_vs_zero3-$preset-$world.svg}

preset_config=$(preset_config "$preset")
vocab=$(vocab_of "$preset_config")
# One batch of random tokens, trained at every step: on random tokens nothing is learnt beyond
# their frequencies, but the same batch again can be fitted, so the curves show how fast each mode
# fits it.
python3 "$here/benches/random_tokens.py" $((2 * world)) 256 "$vocab" > "$work/batch.jsonl"
for _ in $(seq "$steps"); do cat "$work/batch.jsonl"; done > "$work/data.jsonl"

# config NAME MODEL_LINES MODE GRAD_ACCUM STEPS LR [EXPORT]: writes $work/NAME.toml, whose
# output.dir is $work/NAME.
config() {
  cat > "$work/$1.toml" <<TOML
[model]
$2
dtype = "$dtype"
[data]
path = "data.jsonl"
seq_len = 256
shuffle = false
[train]
mode = "$3"
steps = $5
micro_batch_size = 2
grad_accum = $4
lr = $6
betas = [0.9, 0.95]
weight_decay = 0.1
max_grad_norm = 1.0
[lora]
r = 16
alpha = 32
[output]
dir = "$1"
export = "${7:-none}"
TOML
}

# train NAME RANKS: runs $work/NAME.toml, its log in $work/NAME.log (printed if it fails).
train() {
  train_ranks "$2" "$work/$1.toml" "$work/$1.log"
}

echo "== base: a random-init $preset checkpoint (one step at lr = 0, exported)"
config base "init = \"random\"
config = \"$preset_config\"" full 1 1 0.0 hf
train base 1
base="path = \"$work/base/final\""

# name (output.dir, the chart's label), ranks, train.mode, grad_accum
runs=("zero3-full-$world-ranks $world full 1" "zero3-lora-$world-ranks $world lora 1"
      "qlora-1-rank 1 qlora $world")
dirs=()
for run in "${runs[@]}"; do
  read -r name ranks mode accum <<< "$run"
  config "$name" "$base" "$mode" "$accum" "$steps" "$lr"
  echo "== $name: train.mode = \"$mode\", $ranks rank(s), grad_accum $accum, $dtype"
  train "$name" "$ranks"
  "$bin" plan --config "$work/$name.toml" --ranks "$ranks" --json > "$work/$name.plan.json"
  dirs+=("$work/$name")
done

python3 - "$work" "${runs[@]}" <<'PY'
import json, sys
work, runs = sys.argv[1], [r.split() for r in sys.argv[2:]]
mib = lambda b: f"{b / 2**20:.0f}"
print(f"\n{'mode':<28} {'ranks':>5} {'final loss':>10} {'RSS/rank MiB':>14} {'planned MiB':>11}"
      f" {'tokens/s':>9} {'comm MiB/step':>13}")
for name, ranks, *_ in runs:
    plan = json.load(open(f"{work}/{name}.plan.json"))["strategies"][0]
    summary = json.load(open(f"{work}/{name}/summary.json"))
    steps = [json.loads(line) for line in open(f"{work}/{name}/metrics.jsonl")]
    # At 1 rank the engine's counters still count its gathers (of its own whole shards), but
    # nothing leaves the process.
    comm = sum(s["bytes_all_gathered"] + s["bytes_reduce_scattered"] for s in steps) / len(steps)
    comm = f"{comm / 2**20:.1f}" if int(ranks) > 1 else "none"
    rss = "/".join(mib(b) for b in summary["peak_rss_bytes"])
    planned = mib(plan["per_rank_bytes"]["total"])
    print(f"{plan['label']:<28} {ranks:>5} {steps[-1]['loss']:>10.4f} {rss:>14} {planned:>11}"
          f" {summary['steady_tokens_per_s']:>9.0f} {comm:>13}")
PY
"$bin" plot "${dirs[@]}" --out "$chart"
