#!/usr/bin/env python3
"""Quantize a checkpoint as transformers + bitsandbytes do, for references:
    make_nf4_checkpoint.py MODEL_DIR OUT_DIR
Loads MODEL_DIR in its own dtype (config.json's `dtype` / `torch_dtype`) with
BitsAndBytesConfig(load_in_4bit, nf4, double quant, compute float32) on the CPU, and saves it with
save_pretrained: what `shard-train quantize --model MODEL_DIR --out OUT_DIR` must equal."""
import json, sys
import torch
from transformers import AutoModelForCausalLM, BitsAndBytesConfig

src, out = sys.argv[1], sys.argv[2]
cfg = json.load(open(f"{src}/config.json"))
dtype = getattr(torch, cfg.get("dtype") or cfg.get("torch_dtype") or "float32")
bnb = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                         bnb_4bit_compute_dtype=torch.float32, bnb_4bit_quant_storage=torch.uint8)
model = AutoModelForCausalLM.from_pretrained(src, quantization_config=bnb, dtype=dtype, device_map="cpu")
model.save_pretrained(out)
saved = json.load(open(f"{out}/config.json"))
saved["_name_or_path"] = ".."  # no machine path in a fixture
json.dump(saved, open(f"{out}/config.json", "w"), indent=2)
print("saved", out, "dtype", dtype)
