#!/usr/bin/env python3
"""Does transformers + bitsandbytes load what `shard-train quantize` wrote?
    check_nf4_loads.py OUT_DIR [REFERENCE_DIR]
Loads OUT_DIR with AutoModelForCausalLM.from_pretrained (its config.json's quantization_config
makes every decoder linear a bitsandbytes Linear4bit), checks that those linears are 4-bit with
their quant state, and runs a forward pass. With REFERENCE_DIR (e.g. the same model quantized by
tools/make_nf4_checkpoint.py), the state dicts must be equal tensor for tensor and the logits equal.
Exit status 0 and `OK` when all holds."""
import sys
import torch
import bitsandbytes as bnb
from transformers import AutoModelForCausalLM


def load(path):
    m = AutoModelForCausalLM.from_pretrained(path, device_map="cpu", attn_implementation="eager")
    for mod in m.modules():  # the plain dequantize-then-matmul path (AVX-512 repacking needs widths % 32 == 0)
        if hasattr(mod, "support_avx512bf16_for_cpu"):
            mod.support_avx512bf16_for_cpu = False
    return m


model = load(sys.argv[1])
linears = [(n, m) for n, m in model.named_modules() if isinstance(m, bnb.nn.Linear4bit)]
assert linears, "no 4-bit linears: the quantization config was not applied"
for name, m in linears:
    qs = m.weight.quant_state
    assert qs.quant_type == "nf4" and qs.nested and qs.blocksize == 64, f"{name}: {qs.quant_type} nested={qs.nested} blocksize={qs.blocksize}"
ids = torch.arange(1, 17).reshape(2, 8) % model.config.vocab_size
with torch.no_grad():
    logits = model(input_ids=ids).logits
assert torch.isfinite(logits).all(), "non-finite logits"
print(f"{len(linears)} Linear4bit modules (nf4, double quant); logits {tuple(logits.shape)}")
if len(sys.argv) > 2:
    ref = load(sys.argv[2])
    ours, theirs = model.state_dict(), ref.state_dict()
    assert ours.keys() == theirs.keys(), f"state dict keys differ: {sorted(set(ours) ^ set(theirs))}"
    for k in ours:
        assert torch.equal(ours[k], theirs[k]), f"{k} differs from the reference"
    with torch.no_grad():
        assert torch.equal(logits, ref(input_ids=ids).logits), "logits differ from the reference"
    print(f"equal to {sys.argv[2]}: {len(ours)} state dict tensors, and the logits")
print("OK")
