#!/usr/bin/env python3
"""make_qlora_merged.py: peft's merge of the tiny QLoRA reference adapters on the bitsandbytes 4-bit base.

Loads tests/fixtures/tiny-mistral/qlora/nf4 (transformers + bitsandbytes, 4-bit), puts peft's adapters of
tests/fixtures/tiny-mistral/qlora on it, and writes, for every adapted linear, what peft's
`Linear4bit.merge` computes before it re-quantizes: `dequantize_bnb_weight(W) + get_delta_weight()`
(f32, HF names) to tests/fixtures/tiny-mistral/qlora/merged.safetensors (tests/qlora.rs compares the
`hf` export of a QLoRA run with it, in f32 and rounded to bf16). Needs torch, transformers, peft and
bitsandbytes; runs on the CPU (bitsandbytes' CPU kernels, as the other tiny QLoRA references)."""
import torch
from pathlib import Path
from peft import PeftModel
from peft.utils.integrations import dequantize_bnb_weight
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM

QLORA = Path(__file__).resolve().parent.parent / "tests/fixtures/tiny-mistral/qlora"

base = AutoModelForCausalLM.from_pretrained(QLORA / "nf4", device_map="cpu", attn_implementation="eager")
model = PeftModel.from_pretrained(base, QLORA)
merged = {}
for name, module in model.named_modules():
    if hasattr(module, "get_delta_weight") and hasattr(module, "base_layer"):
        weight = module.get_base_layer().weight
        with torch.no_grad():
            value = dequantize_bnb_weight(weight, state=weight.quant_state).float() + module.get_delta_weight("default").float()
        merged[name.removeprefix("base_model.model.") + ".weight"] = value.contiguous()
assert merged, "no adapted linear found"
save_file(merged, QLORA / "merged.safetensors", metadata={"format": "pt"})
print(f"wrote {len(merged)} merged weights to {QLORA / 'merged.safetensors'}")
