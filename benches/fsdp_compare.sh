#!/usr/bin/env bash
# Same model, data shape and optimizer, back to back: shard-train vs PyTorch FSDP2 (gloo) on CPU.
#
#   benches/fsdp_compare.sh [PRESET=small] [WORLD=2] [STEPS=6] [DTYPE=f32|bf16] [ROUNDS=1]
#
# Needs `cargo build --release` and `pip install torch transformers`. Each round runs shard-train
# then the PyTorch baseline, and prints shard-train's summary (steady tokens/s after the first two
# steps, peak RSS per rank) and the baseline's JSON; the last lines are a table of the rounds with
# each round's ratios and their median (on a shared machine only ratios taken back to back hold).
# Both train 2 sequences of 256 tokens per rank per step with per-layer recompute; with bf16,
# both use FSDP2's mixed precision (bf16 compute and gathers, f32 master and reduce-scatter).
# SHARD_TRAIN=path/to/binary measures another build of shard-train.
set -euo pipefail
preset=${1:-small}
world=${2:-2}
steps=${3:-6}
dtype=${4:-f32}
rounds=${5:-1}
source "$(dirname "$0")/common.sh"
vocab=$(vocab_of "$(preset_config "$preset")")
python3 "$here/benches/random_tokens.py" $((steps * 2 * world)) 256 "$vocab" > "$work/data.jsonl"
cat > "$work/run.toml" <<TOML
[model]
init = "random"
config = "$(preset_config "$preset")"
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
flags=(--nproc_per_node "$world")
torch_flags=()
[ "$dtype" = bf16 ] && torch_flags=(--bf16)
for round in $(seq "$rounds"); do
  echo "== round $round: shard-train, $preset, world $world, $dtype"
  SHARD_TRAIN=$bin "$here/launch/local.sh" "$world" train --config "$work/run.toml" --overwrite | tail -n 1
  cat "$work/run/summary.json"; echo
  cp "$work/run/summary.json" "$work/ours-$round.json"
  echo "== round $round: torch FSDP2 (gloo), $preset, world $world, $dtype"
  OMP_NUM_THREADS=$(( $(nproc) / world > 0 ? $(nproc) / world : 1 )) \
    torchrun "${flags[@]}" "$here/benches/torch_fsdp_cpu.py" --preset "$preset" --steps "$steps" "${torch_flags[@]}" 2>/dev/null \
    | tail -n 1 | tee "$work/torch-$round.json"
done
python3 - "$work" "$rounds" <<'PY'
import json, statistics, sys
work, rounds = sys.argv[1], int(sys.argv[2])
print("round  shard-train tok/s  FSDP2 tok/s  speed ratio  RSS per rank (MiB)  RSS ratio")
speed, rss = [], []
for r in range(1, rounds + 1):
    ours = json.load(open(f"{work}/ours-{r}.json"))
    theirs = json.load(open(f"{work}/torch-{r}.json"))
    our_rss = max(ours["peak_rss_bytes"]) / 2**20
    their_rss = max(theirs["peak_rss_mib"])
    speed.append(ours["steady_tokens_per_s"] / theirs["tokens_per_s"])
    rss.append(our_rss / their_rss)
    print(f"{r:5}  {ours['steady_tokens_per_s']:17.0f}  {theirs['tokens_per_s']:11.0f}  {speed[-1]:10.2f}x  {our_rss:7.0f} vs {their_rss:5.0f}  {rss[-1]:8.2f}x")
print(f"median {'':37}{statistics.median(speed):10.2f}x  {'':16}{statistics.median(rss):8.2f}x")
PY
