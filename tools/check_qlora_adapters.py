#!/usr/bin/env python3
"""check_qlora_adapters.py ADAPTER_DIR: do peft adapters from a QLoRA run load on the bitsandbytes 4-bit base?

`AutoPeftModelForCausalLM.from_pretrained(ADAPTER_DIR)` loads the base that adapter_config.json names (a
QLoRA run from a pre-quantized checkpoint names that checkpoint: transformers loads it in 4-bit) and puts
the adapters on it. Checks that the decoder linears are bitsandbytes Linear4bit with their LoRA, that
every adapter tensor peft holds equals the file's, and that the loss on the tiny fixture's data is within
1e-4 of the same base with the peft reference adapters (tests/fixtures/tiny-mistral/qlora): the run's
adapters differ from those by AdamW noise only. Prints OK. Needs torch, transformers, peft, bitsandbytes."""
import json
import sys
from pathlib import Path

import bitsandbytes as bnb
import torch
from peft import AutoPeftModelForCausalLM, PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

TINY = Path(__file__).resolve().parent.parent / "tests/fixtures/tiny-mistral"
adapter_dir = Path(sys.argv[1])


def plain_kernels(model):
    for mod in model.modules():  # bitsandbytes' plain dequantize-then-matmul path (AVX-512 repacking needs widths % 32 == 0)
        if hasattr(mod, "support_avx512bf16_for_cpu"):
            mod.support_avx512bf16_for_cpu = False
    return model.eval()


def loss(model):
    rows = [json.loads(line) for line in open(TINY / "data.jsonl")]
    ids = torch.tensor([r["input_ids"] for r in rows])
    labels = torch.tensor([r["labels"] for r in rows])
    with torch.no_grad():
        return model(input_ids=ids, labels=labels).loss.float().item()


ours = plain_kernels(AutoPeftModelForCausalLM.from_pretrained(adapter_dir, device_map="cpu", attn_implementation="eager"))
adapted = [n for n, m in ours.named_modules() if hasattr(m, "lora_A") and isinstance(m.get_base_layer(), bnb.nn.Linear4bit)]
quantized = [n for n, m in ours.named_modules() if isinstance(m, bnb.nn.Linear4bit)]
assert adapted and len(adapted) == len(quantized), f"{len(quantized)} 4-bit linears, {len(adapted)} with LoRA"
state = {k: v for k, v in ours.state_dict().items() if "lora_" in k}
for name, value in load_file(adapter_dir / "adapter_model.safetensors").items():
    held = state[name.replace(".weight", ".default.weight")]
    assert torch.equal(held, value), f"{name}: peft holds other values than the file"

base = plain_kernels(AutoModelForCausalLM.from_pretrained(TINY / "qlora/nf4", device_map="cpu", attn_implementation="eager"))
reference = plain_kernels(PeftModel.from_pretrained(base, TINY / "qlora"))
ours_loss, reference_loss = loss(ours), loss(reference)
assert abs(ours_loss - reference_loss) < 1e-4, f"loss {ours_loss} with the run's adapters, {reference_loss} with peft's"
print(f"OK: {len(adapted)} Linear4bit with LoRA; loss {ours_loss:.6f} (peft's adapters: {reference_loss:.6f})")
