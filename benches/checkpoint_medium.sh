#!/usr/bin/env bash
# Save and export of the medium preset (200.8 M parameters, init = "random") at world 1, 2 and 4:
# save time, size on disk per rank, the training processes' peak RSS, and the offline export's
# time and peak RSS.
#
#   cargo build --release && benches/checkpoint_medium.sh [WORLDS="1 2 4"]
set -euo pipefail
source "$(dirname "$0")/common.sh"
python3 "$here/benches/random_tokens.py" 8 16 32000 > "$work/data.jsonl"
for world in ${1:-1 2 4}; do
  cat > "$work/run.toml" <<TOML
[model]
init = "random"
config = "$here/tests/fixtures/presets/medium/config.json"
[data]
path = "data.jsonl"
seq_len = 16
shuffle = false
[train]
steps = 1
micro_batch_size = 1
lr = 1e-4
[output]
dir = "run-$world"
export = "none"
TOML
  echo "== world $world"
  SHARD_TRAIN=$bin "$here/launch/local.sh" "$world" train --config "$work/run.toml" | grep -E "^saved|peak RSS"
  du -b "$work/run-$world"/checkpoints/step-0000001/rank-*.safetensors | awk '{printf "  %s: %.1f MiB\n", $2, $1 / 1048576}' | sed "s|$work/||"
  TIMEFORMAT="  export wall %R s"
  time "$bin" export --checkpoint "$work/run-$world" --out "$work/export-$world" --dtype f32
  rm -rf "$work/run-$world" "$work/export-$world"
done
