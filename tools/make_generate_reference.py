#!/usr/bin/env python3
"""make_generate_reference.py MODEL_DIR: greedy continuations by transformers' `generate(do_sample=False)`
of a few prompts, with and without the LoRA adapters of MODEL_DIR/lora (through peft), each run in
float64 and in float32 (eager attention); a case is kept as a reference only where both agree (no
near-tie between the two best tokens decided by rounding).

Writes MODEL_DIR/generate.json:
  {"what": ..., "max_new_tokens": N, "eos_token_id": E,
   "cases": {"base": [{"prompt_ids", "generated_ids", "f32_agrees"}...], "lora": [...]}}
`generated_ids` is the float64 run's continuation (stopping after EOS, which is included)."""
import json, os, sys
import torch
from transformers import MistralForCausalLM
from peft import PeftModel

model_dir = sys.argv[1]
lora_dir = os.path.join(model_dir, "lora")
config = json.load(open(os.path.join(model_dir, "config.json")))
vocab, eos = config["vocab_size"], config["eos_token_id"]
# A short prompt, one longer than the window of tiny-mistral-window (7), and BOS alone.
prompts = [[1, 24, 53, 189], [1, 5, 17, 300, 301, 302, 303, 304, 305, 306, 307, 308], [1]]
assert all(t < vocab for p in prompts for t in p)
NEW = 24


def run(dtype, lora):
    m = MistralForCausalLM.from_pretrained(model_dir, dtype=dtype, attn_implementation="eager")
    if lora:
        m = PeftModel.from_pretrained(m, lora_dir).to(dtype)
    m.eval()
    res = []
    for p in prompts:
        with torch.no_grad():
            o = m.generate(torch.tensor([p]), max_new_tokens=NEW, do_sample=False, eos_token_id=eos, pad_token_id=0)
        res.append(o[0, len(p):].tolist())
    return res


cases = {}
for lora in (False, True):
    a, b = run(torch.float64, lora), run(torch.float32, lora)
    cases["lora" if lora else "base"] = [{"prompt_ids": p, "generated_ids": x, "f32_agrees": x == y} for p, x, y in zip(prompts, a, b)]
out = {"what": f"greedy decoding, max_new_tokens {NEW}, stops after EOS (id {eos}, included)", "max_new_tokens": NEW,
       "eos_token_id": eos, "cases": cases}
with open(os.path.join(model_dir, "generate.json"), "w") as f:
    json.dump(out, f, indent=1)
print(json.dumps({k: [c["f32_agrees"] for c in v] for k, v in cases.items()}))
