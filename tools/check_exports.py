#!/usr/bin/env python3
"""Exports load right in transformers and peft, from any working directory.

Trains the tiny fixture (full fine-tuning, then LoRA from a run config that names the model by a
relative path), exports it in f32 and bf16, and checks that:
- transformers loads each HF export in the dtype of its tensors (config.json's `dtype`), and its
  loss on the fixture's data matches the f32 export's (bf16 within bf16's precision);
- `AutoPeftModelForCausalLM.from_pretrained(adapter_dir)` works from another working directory
  (adapter_config.json names the base by an absolute path), and the adapted model's loss equals
  that of shard-train's merged export of the same run.

Usage: tools/check_exports.py [path/to/shard-train]   (default: target/release/shard-train)
Needs torch, transformers and peft. Exits non-zero on the first failed check.
"""

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from peft import AutoPeftModelForCausalLM
from transformers import AutoModelForCausalLM

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "tests/fixtures/tiny-mistral"
BINARY = Path(sys.argv[1] if len(sys.argv) > 1 else ROOT / "target/release/shard-train").resolve()

CONFIG = """[model]
path = "{model}"
[data]
path = "{data}"
seq_len = 24
shuffle = false
[train]
mode = "{mode}"
steps = 3
micro_batch_size = 4
lr = 1e-2
[lora]
r = 4
alpha = 8
targets = ["q_proj", "v_proj"]
[output]
dir = "run-{mode}"
export = "{export}"
"""


def shard_train(*args, cwd):
    subprocess.run([str(BINARY), *args], cwd=cwd, check=True, stdout=subprocess.DEVNULL)


def fixture_loss(model):
    """Mean token loss of `model` on the fixture's 12 rows, in f32."""
    rows = [json.loads(line) for line in (TINY / "data.jsonl").read_text().splitlines()]
    ids = torch.tensor([r["input_ids"] for r in rows])
    labels = torch.tensor([r["labels"] for r in rows])
    with torch.no_grad():
        return model(input_ids=ids, labels=labels).loss.float().item()


def check(condition, message):
    print(("ok    " if condition else "FAIL  ") + message)
    if not condition:
        sys.exit(1)


def main():
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        configs = tmp / "configs"
        configs.mkdir()
        # The model named relatively, as `configs/../tests/fixtures/tiny-mistral` in a config under configs/.
        relative_model = os.path.relpath(TINY, configs)
        for mode, export in [("full", "hf"), ("lora", "peft")]:
            (configs / f"{mode}.toml").write_text(CONFIG.format(model=relative_model, data=TINY / "data.jsonl", mode=mode, export=export))
            shard_train("train", "--config", f"configs/{mode}.toml", cwd=tmp)
        for dtype in ["f32", "bf16"]:
            shard_train("export", "--checkpoint", "configs/run-full", "--out", f"full-{dtype}", "--dtype", dtype, cwd=tmp)
        shard_train("export", "--checkpoint", "configs/run-lora", "--out", "lora-merged", "--dtype", "f32", cwd=tmp)

        elsewhere = tmp / "elsewhere"
        elsewhere.mkdir()
        os.chdir(elsewhere)
        losses = {}
        for dtype, torch_dtype in [("f32", torch.float32), ("bf16", torch.bfloat16)]:
            model = AutoModelForCausalLM.from_pretrained(tmp / f"full-{dtype}")
            check(model.dtype == torch_dtype, f"transformers loads the {dtype} export as {model.dtype}")
            losses[dtype] = fixture_loss(model)
        check(abs(losses["bf16"] - losses["f32"]) < 2e-2, f"bf16 export's loss {losses['bf16']:.4f} ~ f32's {losses['f32']:.4f}")

        adapter_dir = tmp / "configs/run-lora/final"
        base = json.loads((adapter_dir / "adapter_config.json").read_text())["base_model_name_or_path"]
        check(Path(base).is_absolute(), f"adapter_config.json names the base absolutely: {base}")
        peft_model = AutoPeftModelForCausalLM.from_pretrained(adapter_dir)
        merged = AutoModelForCausalLM.from_pretrained(tmp / "lora-merged")
        peft_loss, merged_loss = fixture_loss(peft_model), fixture_loss(merged)
        check(abs(peft_loss - merged_loss) < 1e-4, f"peft loads the adapters from elsewhere: loss {peft_loss:.6f} = merged export's {merged_loss:.6f}")
    print("all export checks passed")


if __name__ == "__main__":
    main()
