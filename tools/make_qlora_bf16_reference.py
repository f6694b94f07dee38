#!/usr/bin/env python3
"""make_qlora_bf16_reference.py REFERENCE_DIR: QLoRA in bf16 mixed precision on the bf16 NF4 base, as
transformers + bitsandbytes + peft compute it, on CPU.

The base is REFERENCE_DIR/qlora/nf4-bf16 (tools/make_nf4_checkpoint.py of the bf16 model: NF4 weights
with bf16 quant states; embedding, norms and head in bf16), loaded by transformers + bitsandbytes; each
quantized weight is bitsandbytes' own dequantization (F.dequantize_4bit, in bf16). peft LoRA
(REFERENCE_DIR/reference.json's r, alpha, targets, lr; init from lora/adapter_init.safetensors) trains
with the mixed precision of tools/make_bf16_reference.py (FSDP2's MixedPrecisionPolicy(param_dtype=
bfloat16, reduce_dtype=float32)): f32 master adapters updated by torch.optim.AdamW, a bf16 copy of them
before every forward, forward and backward in bf16 (RoPE's inv_freq kept f32, the loss on f32 logits),
bf16 gradients summed over micro-batches in f32, clipping in f32. As make_qlora_reference.py, peft runs
on a model whose quantized weights are replaced by that dequantization (bitsandbytes' CPU backward needs
widths the tiny model lacks).

Writes REFERENCE_DIR/qlora/bf16.safetensors (the master adapters after the steps, peft keys) and
qlora/bf16.json: losses, grad norms, and how far torch moves when a step is split into micro-batches
differently (the spread any other bf16 implementation must be allowed)."""
import json, sys, torch
import bitsandbytes.functional as F
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, MistralForCausalLM
from peft import get_peft_model_state_dict
from reference_training import Fixture, distance, rebatched, train_mixed

fixture = Fixture(sys.argv[1])
ref, meta = fixture.path, fixture.meta
base_dir = f"{ref}/qlora/nf4-bf16"
lc = meta["lora"]

quantized = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.bfloat16, device_map="cpu", attn_implementation="eager")
base = {}
for name, module in quantized.named_modules():
    w = getattr(module, "weight", None)
    if w is not None and hasattr(w, "quant_state"):
        base[f"{name}.weight"] = F.dequantize_4bit(w.data, w.quant_state)
for name, p in quantized.named_parameters():
    base.setdefault(name, p.data)
assert all(t.dtype == torch.bfloat16 for t in base.values()), "the bf16 base dequantizes to bf16"


def train(split):
    """The f32 master adapters after the steps, the losses and grad norms; the base's values are
    bf16, so the f32 model holds them exactly."""
    master = MistralForCausalLM.from_pretrained(ref, torch_dtype=torch.float32, attn_implementation="eager")
    with torch.no_grad():
        for k, v in master.named_parameters():
            v.copy_(base[k].float())
    master = fixture.with_lora(master)
    names = [n for n, t in master.named_parameters() if t.requires_grad]
    losses, norms = train_mixed(fixture, master, names, lc["lr"], split)
    return {k: v.detach().clone().contiguous() for k, v in get_peft_model_state_dict(master).items()}, losses, norms


final, losses, norms = train(fixture.per_step)
f32 = load_file(f"{ref}/qlora/adapter_model.safetensors")
info = {"what": __doc__.split("\n\n")[0], "losses": losses, "grad_norms_before_clip": norms,
        "rebatched": rebatched(fixture, lambda split: train(split)[:2], final, losses),
        "f32_qlora_vs_bf16": distance(f32, final),
        "made_with": {m: __import__(m).__version__ for m in ("torch", "transformers", "peft", "bitsandbytes")}}
save_file(final, f"{ref}/qlora/bf16.safetensors")
json.dump(info, open(f"{ref}/qlora/bf16.json", "w"), indent=2)
print(json.dumps({k: info[k] for k in ("losses", "rebatched", "f32_qlora_vs_bf16")}, indent=1))
