#!/usr/bin/env bash
# Packed vs unpacked training on instruction-like lengths (benches/instruction_lengths.py: median
# ~200 tokens, a long tail to seq_len 2048): real (not padding) tokens trained per second.
#
#   benches/packing.sh [PRESET=small] [WORLD=2] [STEPS=6] [EXAMPLES=2000]
#
# Needs `cargo build --release -p shard-train`. Both runs train the same examples from a random
# init of tests/fixtures/presets/PRESET on WORLD ranks, seq_len 2048, micro-batches of 4 rows:
# unpacked (4 examples a micro-batch, padded, or laid out as one row where that is cheaper) and
# packed (4 packed rows a micro-batch). The first step is left out (warm-up). Prints one table
# (docs/packing.md's).
set -euo pipefail
preset=${1:-small}
world=${2:-2}
steps=${3:-6}
examples=${4:-2000}
source "$(dirname "$0")/common.sh"
preset_config=$(preset_config "$preset")
vocab=$(vocab_of "$preset_config")
python3 "$here/benches/instruction_lengths.py" "$examples" 2048 "$vocab" > "$work/data.jsonl"

echo "| layout | real tokens a step | real tokens/s | s/step |"
echo "| --- | --- | --- | --- |"
for packing in false true; do
  cat > "$work/$packing.toml" <<TOML
[model]
init = "random"
config = "$preset_config"
[data]
path = "$work/data.jsonl"
seq_len = 2048
packing = $packing
[train]
mode = "full"
steps = $steps
micro_batch_size = 4
lr = 1e-4
[output]
dir = "$work/$packing"
export = "none"
TOML
  train_ranks "$world" "$work/$packing.toml" "$work/$packing.log"
  python3 - "$work/$packing/metrics.jsonl" "$packing" <<'PY'
import json, sys
steps = [json.loads(l) for l in open(sys.argv[1])][1:]
tokens, seconds = sum(s["tokens"] for s in steps), sum(s["seconds"] for s in steps)
layout = "packed" if sys.argv[2] == "true" else "unpacked"
print(f"| {layout} | {tokens / len(steps):,.0f} | {tokens / seconds:,.0f} | {seconds / len(steps):.2f} |")
PY
done
