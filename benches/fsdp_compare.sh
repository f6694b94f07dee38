#!/usr/bin/env bash
# Same model, data shape and optimizer, back to back: shard-train vs PyTorch FSDP2 (gloo) on CPU.
#
#   benches/fsdp_compare.sh [PRESET=small] [WORLD=2] [STEPS=6] [DTYPE=f32|bf16]
#
# Needs `cargo build --release` and `pip install torch transformers`. Prints shard-train's summary
# (steady tokens/s after the first two steps, peak RSS per rank) and the PyTorch baseline's JSON.
# Both train 2 sequences of 256 tokens per rank per step with per-layer recompute; with bf16,
# both use FSDP2's mixed precision (bf16 compute and gathers, f32 master and reduce-scatter).
# SHARD_TRAIN=path/to/binary measures another build of shard-train.
set -euo pipefail
preset=${1:-small}
world=${2:-2}
steps=${3:-6}
dtype=${4:-f32}
here=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
vocab=$(python3 -c "import json; print(json.load(open('$here/tests/fixtures/presets/$preset/config.json'))['vocab_size'])")
python3 "$here/benches/random_tokens.py" $((steps * 2 * world)) 256 "$vocab" > "$work/data.jsonl"
cat > "$work/run.toml" <<TOML
[model]
init = "random"
config = "$here/tests/fixtures/presets/$preset/config.json"
dtype = "$dtype"
[data]
path = "data.jsonl"
seq_len = 256
shuffle = false
[train]
steps = $steps
micro_batch_size = 2
lr = 1e-4
betas = [0.9, 0.95]
weight_decay = 0.1
max_grad_norm = 1.0
[output]
dir = "run"
export = "none"
TOML
echo "== shard-train, $preset, world $world, $dtype"
"$here/launch/local.sh" "$world" train --config "$work/run.toml" | tail -n 1
cat "$work/run/summary.json"; echo
echo "== torch FSDP2 (gloo), $preset, world $world, $dtype"
flags=(--nproc_per_node "$world")
torch_flags=()
[ "$dtype" = bf16 ] && torch_flags=(--bf16)
OMP_NUM_THREADS=$(( $(nproc) / world > 0 ? $(nproc) / world : 1 )) \
  torchrun "${flags[@]}" "$here/benches/torch_fsdp_cpu.py" --preset "$preset" --steps "$steps" "${torch_flags[@]}" 2>/dev/null | tail -n 1
