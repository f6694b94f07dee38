#!/usr/bin/env bash
# AdamW vs AdamW8bit (train.optimizer) in full fine-tuning on the CPU: tokens/s, each rank's
# peak resident memory, the engine's model-state bytes (rank 0), and the plan's per-rank total
# for the same config.
#
#   benches/adamw8bit.sh [PRESET=small] [WORLD=2] [STEPS=6] [SEQ=256]
#
# Needs `cargo build --release -p shard-train`. Both runs train random tokens
# (benches/random_tokens.py) from a random init of tests/fixtures/presets/PRESET on WORLD ranks,
# micro-batch 2, f32. tokens/s is summary.json's steady figure (the first two steps left out).
# runtime.offload = "optimizer" is not run: the engine refuses it for now.
set -euo pipefail
preset=${1:-small}
world=${2:-2}
steps=${3:-6}
seq=${4:-256}
here=$(cd "$(dirname "$0")/.." && pwd)
bin=${SHARD_TRAIN:-$here/target/release/shard-train}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
preset_config=$here/tests/fixtures/presets/$preset/config.json
vocab=$(python3 -c "import json; print(json.load(open('$preset_config'))['vocab_size'])")
python3 "$here/benches/random_tokens.py" $((steps * world * 2)) "$seq" "$vocab" > "$work/data.jsonl"

echo "| optimizer | tokens/s | peak RSS per rank (MiB) | model states, rank 0 (MiB) | planned per rank (MiB) |"
echo "| --- | --- | --- | --- | --- |"
for optimizer in adamw adamw8bit; do
  cat > "$work/$optimizer.toml" <<TOML
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
[output]
dir = "$work/$optimizer"
export = "none"
save_at_end = false
TOML
  SHARD_TRAIN=$bin "$here/launch/local.sh" "$world" train --config "$work/$optimizer.toml" > "$work/$optimizer.log" 2>&1 \
    || { cat "$work/$optimizer.log" >&2; exit 1; }
  "$bin" plan --config "$work/$optimizer.toml" --ranks "$world" --json > "$work/$optimizer.plan.json"
  python3 - "$work/$optimizer/summary.json" "$work/$optimizer.plan.json" "$optimizer" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
p = json.load(open(sys.argv[2]))["strategies"][0]["per_rank_bytes"]["total"]
mib = lambda b: b / 2**20
rss = "/".join(f"{mib(b):.0f}" for b in s["peak_rss_bytes"])
print(f"| {sys.argv[3]} | {s['steady_tokens_per_s']:.0f} | {rss} | {mib(s['model_state_bytes']):.1f} | {mib(p):.0f} |")
PY
done
