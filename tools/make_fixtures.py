#!/usr/bin/env python3
"""Reference fixtures for the sharded trainer, made with HF transformers + torch + peft.

Usage: python make_fixtures.py OUT_DIR PROFILE
  PROFILE "public"  -> the set in tests/fixtures/tiny-mistral
  PROFILE "window"  -> tests/fixtures/tiny-mistral-window: the sliding window active
                       (seq_len 24 > window 7), 6 heads over 2 KV heads, 3 layers, and 6 examples
                       per step (so that world sizes 1, 2, 3 and 6 split a step evenly)
  (add profiles to PROFILES for more cases)

Each profile writes, under OUT_DIR:
  config.json, model.safetensors        initial HF checkpoint (f32)
  sharded/                               the same weights as a 2-file sharded HF checkpoint (bf16)
  data.jsonl                             pre-tokenized examples {"input_ids": [...], "labels": [...]}
  reference.safetensors                  batch-0 logits, loss, grads; full-FT params after K AdamW steps
  reference.json                         hyper-parameters, per-step losses and grad norms (full FT and LoRA)
  lora/adapter_init.safetensors          PEFT-named LoRA weights before training
  lora/adapter_config.json               PEFT adapter config
  lora/adapter_model.safetensors         PEFT adapter after K steps (reference)
"""
import json
import math
import os
import sys

import torch
from safetensors.torch import save_file
from transformers import MistralConfig, MistralForCausalLM

PROFILES = {
    "public": dict(
        seed=1234, vocab=1000, hidden=64, inter=160, layers=2, heads=4, kv=2, head_dim=16,
        rope_theta=10000.0, sliding_window=4096, seq=24, n_examples=12, per_step=4, steps=3,
        lr=1e-2, betas=(0.9, 0.95), eps=1e-8, wd=0.1, clip=0.5, init_std=0.05,
        lora=dict(r=4, alpha=8, targets=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"], lr=2e-2),
    ),
    "window": dict(
        seed=4321, vocab=500, hidden=48, inter=112, layers=3, heads=6, kv=2, head_dim=8,
        rope_theta=500000.0, sliding_window=7, seq=24, n_examples=18, per_step=6, steps=3,
        lr=1e-2, betas=(0.9, 0.95), eps=1e-8, wd=0.1, clip=0.5, init_std=0.05,
        lora=dict(r=2, alpha=6, targets=["q_proj", "v_proj", "down_proj"], lr=2e-2),
    ),
}


def make_data(p, g):
    """Fixed-length examples with a variable-length masked prompt (labels == -100)."""
    rows = []
    for i in range(p["n_examples"]):
        ids = torch.randint(3, p["vocab"], (p["seq"],), generator=g).tolist()
        ids[0] = 1  # BOS
        prompt = int(torch.randint(1, p["seq"] // 2, (1,), generator=g))
        labels = [-100] * prompt + ids[prompt:]
        rows.append({"input_ids": ids, "labels": labels})
    return rows


def batch(rows):
    return (torch.tensor([r["input_ids"] for r in rows]), torch.tensor([r["labels"] for r in rows]))


def global_loss(model, ids, labels):
    """Sum of token cross-entropies over the batch divided by the number of target tokens."""
    logits = model(input_ids=ids).logits
    shift_logits = logits[:, :-1, :].reshape(-1, logits.shape[-1])
    shift_labels = labels[:, 1:].reshape(-1)
    loss = torch.nn.functional.cross_entropy(shift_logits, shift_labels, ignore_index=-100, reduction="sum")
    return loss / (shift_labels != -100).sum(), logits


def train(model, params, rows, p, lr):
    opt = torch.optim.AdamW(params, lr=lr, betas=p["betas"], eps=p["eps"], weight_decay=p["wd"])
    losses, norms = [], []
    for s in range(p["steps"]):
        ids, labels = batch(rows[s * p["per_step"]:(s + 1) * p["per_step"]])
        opt.zero_grad()
        loss, _ = global_loss(model, ids, labels)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(params, p["clip"])
        opt.step()
        losses.append(loss.item())
        norms.append(norm.item())
    return losses, norms


def main(out, profile):
    p = PROFILES[profile]
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(p["seed"])
    g = torch.Generator().manual_seed(p["seed"])
    cfg = MistralConfig(
        vocab_size=p["vocab"], hidden_size=p["hidden"], intermediate_size=p["inter"],
        num_hidden_layers=p["layers"], num_attention_heads=p["heads"], num_key_value_heads=p["kv"],
        head_dim=p["head_dim"], max_position_embeddings=4096, rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": p["rope_theta"]},
        sliding_window=p["sliding_window"], tie_word_embeddings=False, initializer_range=p["init_std"],
        bos_token_id=1, eos_token_id=2, attn_implementation="eager",
    )
    model = MistralForCausalLM(cfg).float()
    with torch.no_grad():  # RMSNorm weights away from 1.0 so that a missing norm weight shows
        for n, t in model.named_parameters():
            if n.endswith("norm.weight"):
                t.copy_(1.0 + 0.1 * torch.randn(t.shape, generator=g))
    model.config.architectures = ["MistralForCausalLM"]
    model.save_pretrained(out, safe_serialization=True)
    sd = {k: v.to(torch.bfloat16).contiguous() for k, v in model.state_dict().items()}
    keys = sorted(sd)
    half = len(keys) // 2
    os.makedirs(f"{out}/sharded", exist_ok=True)
    weight_map = {}
    for i, part in enumerate([keys[:half], keys[half:]]):
        name = f"model-{i + 1:05d}-of-00002.safetensors"
        save_file({k: sd[k] for k in part}, f"{out}/sharded/{name}", metadata={"format": "pt"})
        weight_map.update({k: name for k in part})
    total = sum(v.numel() * 2 for v in sd.values())
    json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, open(f"{out}/sharded/model.safetensors.index.json", "w"), indent=2)
    model.config.save_pretrained(f"{out}/sharded")

    rows = make_data(p, g)
    with open(f"{out}/data.jsonl", "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")

    ref = {}
    ids, labels = batch(rows[:p["per_step"]])
    model.zero_grad()
    loss, logits = global_loss(model, ids, labels)
    loss.backward()
    ref["batch0.logits"] = logits.detach().contiguous()
    ref["batch0.loss"] = loss.detach().reshape(1)
    for n, t in model.named_parameters():
        ref[f"batch0.grad.{n}"] = t.grad.detach().clone().contiguous()
    model.zero_grad()

    init_state = {k: v.clone() for k, v in model.state_dict().items()}
    full_losses, full_norms = train(model, list(model.parameters()), rows, p, p["lr"])
    for n, t in model.named_parameters():
        ref[f"full.final.{n}"] = t.detach().clone().contiguous()
    save_file(ref, f"{out}/reference.safetensors")

    # LoRA with peft on a fresh copy of the initial weights
    from peft import LoraConfig, get_peft_model
    base = MistralForCausalLM(cfg).float()
    base.load_state_dict(init_state)
    lc = p["lora"]
    lcfg = LoraConfig(r=lc["r"], lora_alpha=lc["alpha"], target_modules=lc["targets"], lora_dropout=0.0, bias="none", task_type="CAUSAL_LM")
    torch.manual_seed(p["seed"] + 1)
    pm = get_peft_model(base, lcfg)
    with torch.no_grad():  # non-zero B so that the first step moves every adapter weight
        for n, t in pm.named_parameters():
            if "lora_B" in n:
                t.copy_(0.01 * torch.randn(t.shape, generator=g))
    os.makedirs(f"{out}/lora", exist_ok=True)
    from peft.utils import get_peft_model_state_dict
    save_file({k: v.contiguous() for k, v in get_peft_model_state_dict(pm).items()}, f"{out}/lora/adapter_init.safetensors")
    trainable = [t for t in pm.parameters() if t.requires_grad]
    lora_losses, lora_norms = train(pm, trainable, rows, p, lc["lr"])
    pm.save_pretrained(f"{out}/lora")  # adapter_model.safetensors + adapter_config.json

    meta = {
        "made_with": {"torch": torch.__version__, "transformers": __import__("transformers").__version__, "peft": __import__("peft").__version__},
        "data": "data.jsonl; step s uses rows [s*examples_per_step, (s+1)*examples_per_step) in file order",
        "loss": "sum of next-token cross-entropies over the whole step's examples / number of target tokens (labels != -100, after the shift)",
        "examples_per_step": p["per_step"], "steps": p["steps"], "seq_len": p["seq"],
        "optimizer": {"name": "torch.optim.AdamW", "betas": list(p["betas"]), "eps": p["eps"], "weight_decay": p["wd"], "weight_decay_applies_to": "every trainable parameter"},
        "max_grad_norm": p["clip"], "clip": "torch.nn.utils.clip_grad_norm_ over all trainable parameters, before the step",
        "full": {"lr": p["lr"], "lr_schedule": "constant", "losses": full_losses, "grad_norms_before_clip": full_norms},
        "lora": {"r": lc["r"], "alpha": lc["alpha"], "targets": lc["targets"], "dropout": 0.0, "lr": lc["lr"], "lr_schedule": "constant",
                  "init": "lora/adapter_init.safetensors", "losses": lora_losses, "grad_norms_before_clip": lora_norms},
        "param_count": sum(t.numel() for t in model.parameters()),
    }
    json.dump(meta, open(f"{out}/reference.json", "w"), indent=2)
    print(profile, "loss0", ref["batch0.loss"].item(), "full", full_losses, "lora", lora_losses)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
