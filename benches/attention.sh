#!/usr/bin/env bash
# Eager vs fused attention (runtime.attention) in full fine-tuning on the CPU at long sequences:
# each rank's peak resident memory and tokens/s, by sequence length.
#
#   benches/attention.sh [PRESET=small] [WORLD=2] [STEPS=4] [SEQS="1024 2048 4096"]
#
# Needs `cargo build --release -p shard-train`. Each run trains random tokens
# (benches/random_tokens.py) from a random init of tests/fixtures/presets/PRESET on WORLD ranks,
# one sequence per rank per step (micro-batch 1), f32. tokens/s is summary.json's steady figure
# (the first two steps left out); the memory columns are the peak RSS of each rank, then the
# step from the previous sequence length (the part that grows with the sequence).
set -euo pipefail
preset=${1:-small}
world=${2:-2}
steps=${3:-4}
seqs=${4:-1024 2048 4096}
source "$(dirname "$0")/common.sh"
preset_config=$(preset_config "$preset")
vocab=$(vocab_of "$preset_config")

echo "| attention | seq | peak RSS per rank (GiB) | step from the shorter seq (GiB) | tokens/s |"
echo "| --- | --- | --- | --- | --- |"
for attention in eager fused; do
  for seq in $seqs; do
    run=$work/$attention-$seq
    python3 "$here/benches/random_tokens.py" $((steps * world)) "$seq" "$vocab" > "$run.jsonl"
    cat > "$run.toml" <<TOML
[model]
init = "random"
config = "$preset_config"
[data]
path = "$run.jsonl"
seq_len = $seq
shuffle = false
[train]
mode = "full"
steps = $steps
micro_batch_size = 1
lr = 1e-4
[runtime]
attention = "$attention"
[output]
dir = "$run"
export = "none"
save_at_end = false
TOML
    train_ranks "$world" "$run.toml" "$run.log"
    python3 - "$run/summary.json" "$attention" "$seq" "$work/previous-$attention" <<'PY'
import json, os, sys
s = json.load(open(sys.argv[1]))
previous = sys.argv[4]  # the largest rank's peak at the shorter sequence, in GiB
gib = max(s["peak_rss_bytes"]) / 2**30
rss = "/".join(f"{b / 2**30:.2f}" for b in s["peak_rss_bytes"])
step = f"{gib - float(open(previous).read()):+.2f}" if os.path.exists(previous) else ""
open(previous, "w").write(str(gib))
print(f"| {sys.argv[2]} | {sys.argv[3]} | {rss} | {step} | {s['steady_tokens_per_s']:.0f} |")
PY
  done
done
