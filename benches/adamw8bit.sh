#!/usr/bin/env bash
# The levers for fewer GPUs in full fine-tuning on the CPU: AdamW vs AdamW8bit (train.optimizer),
# each without and with runtime.offload = "optimizer": tokens/s, each rank's peak resident memory,
# the engine's model-state bytes on the device and offloaded to the host (rank 0), and the plan's
# per-rank device total for the same config. On the CPU the device is the host: the offload moves
# no memory, it shows the host step's cost.
#
#   benches/adamw8bit.sh [PRESET=small] [WORLD=2] [STEPS=6] [SEQ=256]
#
# Needs `cargo build --release -p shard-train`. Both runs train random tokens
# (benches/random_tokens.py) from a random init of tests/fixtures/presets/PRESET on WORLD ranks,
# micro-batch 2, f32. tokens/s is summary.json's steady figure (the first two steps left out).
set -euo pipefail
preset=${1:-small}
world=${2:-2}
steps=${3:-6}
seq=${4:-256}
source "$(dirname "$0")/common.sh"
preset_config=$(preset_config "$preset")
vocab=$(vocab_of "$preset_config")
python3 "$here/benches/random_tokens.py" $((steps * world * 2)) "$seq" "$vocab" > "$work/data.jsonl"

echo "| optimizer | offload | tokens/s | peak RSS per rank (MiB) | model states, rank 0 (MiB) | host states, rank 0 (MiB) | planned per rank (MiB) |"
echo "| --- | --- | --- | --- | --- | --- | --- |"
for run in adamw,none adamw8bit,none adamw,optimizer adamw8bit,optimizer; do
  optimizer=${run%,*} offload=${run#*,} name=${run/,/-}
  cat > "$work/$name.toml" <<TOML
[model]
init = "random"
config = "$preset_config"
[data]
path = "$work/data.jsonl"
seq_len = $seq
shuffle = false
[train]
mode = "full"
optimizer = "$optimizer"
steps = $steps
micro_batch_size = 2
lr = 1e-4
[runtime]
offload = "$offload"
[output]
dir = "$work/$name"
export = "none"
save_at_end = false
TOML
  train_ranks "$world" "$work/$name.toml" "$work/$name.log"
  "$bin" plan --config "$work/$name.toml" --ranks "$world" --json > "$work/$name.plan.json"
  python3 - "$work/$name/summary.json" "$work/$name.plan.json" "$optimizer" "$offload" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
p = json.load(open(sys.argv[2]))["strategies"][0]["per_rank_bytes"]["total"]
mib = lambda b: b / 2**20
rss = "/".join(f"{mib(b):.0f}" for b in s["peak_rss_bytes"])
host = mib(s.get("host_state_bytes", 0))
print(f"| {sys.argv[3]} | {sys.argv[4]} | {s['steady_tokens_per_s']:.0f} | {rss} | {mib(s['model_state_bytes']):.1f} | {host:.1f} | {mib(p):.0f} |")
PY
done
