#!/usr/bin/env bash
# `shard-train quantize` against transformers + bitsandbytes on a random bf16 model with the medium
# preset's shapes (LAYERS decoder layers; its MLP weights have 2.9 M elements, so torch's mean of
# their absmaxes runs on several threads): both quantize it, the outputs must be equal tensor for
# tensor (tools/check_nf4_loads.py also loads ours with transformers and compares the logits), and
# the time and peak RSS of each are printed. Needs torch, transformers and bitsandbytes.
#
#   cargo build --release && benches/nf4_vs_bitsandbytes.sh [LAYERS=4]
set -euo pipefail
source "$(dirname "$0")/common.sh"
python3 - "$here/tests/fixtures/presets/medium/config.json" "$work/model" "${1:-4}" <<'PY'
import json, sys, torch
from transformers import MistralConfig, MistralForCausalLM
keys = ("vocab_size", "hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads", "head_dim",
        "max_position_embeddings", "rms_norm_eps", "rope_theta", "sliding_window")
cfg = MistralConfig(**{k: v for k, v in json.load(open(sys.argv[1])).items() if k in keys}, num_hidden_layers=int(sys.argv[3]))
torch.manual_seed(0)
model = MistralForCausalLM(cfg).to(torch.bfloat16)
model.save_pretrained(sys.argv[2])
print(f"random bf16 model: {sum(p.numel() for p in model.parameters()):,} parameters")
PY
threads=$(python3 -c "import torch; print(torch.get_num_threads())")
echo "== transformers + bitsandbytes (torch threads: $threads)"
/usr/bin/time -f "%e s, peak RSS %M KiB" python3 "$here/tools/make_nf4_checkpoint.py" "$work/model" "$work/bnb" 2>&1 | grep -v "Loading weights\|Writing model\|kernels"
echo "== shard-train quantize --torch-threads $threads"
/usr/bin/time -f "%e s, peak RSS %M KiB" "$bin" quantize --model "$work/model" --out "$work/ours" --torch-threads "$threads"
echo "== equal?"
python3 "$here/tools/check_nf4_loads.py" "$work/ours" "$work/bnb" 2>&1 | grep -v "Loading weights\|kernels"
