#!/usr/bin/env python3
"""Forward + backward time of transformers' Mistral on CPU, the same shapes as
benches/model_fwd_bwd.rs.

  python3 benches/model_fwd_bwd_torch.py [PRESET=small] [BATCH=2] [SEQ=256] [ITERS=5] [ATTN=eager|sdpa]

Prints one JSON line: milliseconds per forward+backward (median of ITERS, after one warm-up)."""
import json, os, sys, time
import torch
from transformers import MistralConfig, MistralForCausalLM

preset, batch, seq, iters, attn = (sys.argv[1:] + ["small", "2", "256", "5", "eager"][len(sys.argv) - 1:])[:5]
batch, seq, iters = int(batch), int(seq), int(iters)
here = os.path.dirname(os.path.abspath(__file__))
cfg = MistralConfig.from_pretrained(f"{here}/../tests/fixtures/presets/{preset}")
cfg._attn_implementation = attn
torch.manual_seed(0)
model = MistralForCausalLM(cfg).float()
ids = torch.randint(3, cfg.vocab_size, (batch, seq))
times = []
for _ in range(iters + 1):
    t0 = time.time()
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    model.zero_grad(set_to_none=True)
    times.append((time.time() - t0) * 1e3)
times = sorted(times[1:])
print(json.dumps({"system": f"transformers {attn} (torch {torch.__version__})", "preset": preset, "batch": batch, "seq": seq,
                  "ms_per_fwd_bwd": round(times[len(times) // 2], 1), "threads": torch.get_num_threads()}))
