#!/usr/bin/env python3
"""Exports load right in transformers and peft, from any working directory.

Trains the tiny fixture (full fine-tuning, then LoRA from a run config that names the model by a
relative path), exports it in f32 and bf16, and checks that:
- transformers loads each HF export in the dtype of its tensors (config.json's `dtype`), and its
  loss on the fixture's data matches the f32 export's (bf16 within bf16's precision);
- `AutoPeftModelForCausalLM.from_pretrained(adapter_dir)` works from another working directory
  (adapter_config.json names the base by an absolute path), and the adapted model's loss equals
  that of shard-train's merged export of the same run;
- a chat-trained run whose tokenizer lies outside the model (a random init, `data.tokenizer`
  naming the fixture's Mistral tokenizer) exports that tokenizer and a chat template, at the end of
  the run and from its save: `AutoTokenizer.from_pretrained(export)` tokenizes as training did,
  and `apply_chat_template` gives the ids training saw for each conversation of the chat fixture;
  likewise a `messages` run rendered with a chat template of its own (`data.chat_template`): its
  exports carry that template, not the chat format's.

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
from transformers import AutoModelForCausalLM, AutoTokenizer

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "tests/fixtures/tiny-mistral"
DATA = ROOT / "tests/fixtures/data"
TOKENIZER = ROOT / "tests/fixtures/tokenizer/mistral-7b-v0.1.tokenizer.json"
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

# A random model with the Mistral tokenizer's vocabulary, trained one step on the chat fixture.
CHAT_MODEL = {"model_type": "mistral", "vocab_size": 32000, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
              "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 16, "bos_token_id": 1, "eos_token_id": 2}
CHAT_CONFIG = """[model]
init = "random"
config = "chat-model.json"
[data]
path = "{data}"
format = "{format}"
tokenizer = "{tokenizer}"
seq_len = 48
{extra}
[train]
steps = 1
micro_batch_size = 2
[output]
dir = "run-{format}"
export = "hf"
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
        check_chat_export(tmp)
    print("all export checks passed")


def check_chat_export(tmp):
    """The tokenizer and chat template of chat-trained runs, in their end-of-run and offline exports:
    the chat format (Mistral's [INST], the template an export writes for it) and the messages
    format rendered with a template of the run's own (data.chat_template)."""
    (tmp / "configs/chat-model.json").write_text(json.dumps(CHAT_MODEL))
    template = DATA / "chat_template.jinja"
    for fmt, rows_file, extra in [("chat", "chat.rows.jsonl", ""), ("messages", "messages-template.rows.jsonl", f'chat_template = "{template}"')]:
        data = DATA / f"{fmt}.jsonl"
        (tmp / f"configs/{fmt}.toml").write_text(CHAT_CONFIG.format(data=data, format=fmt, tokenizer=TOKENIZER, extra=extra))
        shard_train("train", "--config", f"configs/{fmt}.toml", cwd=tmp)
        shard_train("export", "--checkpoint", f"configs/run-{fmt}", "--out", f"{fmt}-export", cwd=tmp)
        conversations = [openai_messages(json.loads(line)) for line in data.read_text().splitlines() if line.strip()]
        rows = [json.loads(line) for line in (DATA / "expected" / rows_file).read_text().splitlines()]
        for export in [tmp / f"configs/run-{fmt}/final", tmp / f"{fmt}-export"]:
            tok = AutoTokenizer.from_pretrained(export)
            check(tok("Hello world")["input_ids"] == [1, 22557, 1526], f"AutoTokenizer loads {fmt} {export.name}'s tokenizer: <s> Hello world")
            for messages, row in zip(conversations, rows):
                ids = tok.apply_chat_template(messages, tokenize=True)
                ids = ids if isinstance(ids, list) else ids["input_ids"]
                # Training cut rows at seq_len 48.
                row_ids = row["input_ids"]
                check(ids[: len(row_ids)] == row_ids, f"{fmt}: apply_chat_template gives the ids training saw ({len(row_ids)} tokens)")
            first_turn = conversations[0][: next(i for i, m in enumerate(conversations[0]) if m["role"] == "user") + 1]
            prompt = tok.apply_chat_template(first_turn, tokenize=True, add_generation_prompt=True)
            prompt = prompt if isinstance(prompt, list) else prompt["input_ids"]
            answer_starts = next(i for i, label in enumerate(rows[0]["labels"]) if label != -100)
            check(prompt == rows[0]["input_ids"][:answer_starts], f"{fmt}: a user turn alone renders the prompt of its answer")


def openai_messages(row):
    """A conversation in OpenAI's spelling, whether the line uses it or ShareGPT's."""
    if "messages" in row:
        return row["messages"]
    roles = {"human": "user", "gpt": "assistant", "system": "system"}
    return [{"role": roles[m["from"]], "content": m["value"]} for m in row["conversations"]]


if __name__ == "__main__":
    main()
