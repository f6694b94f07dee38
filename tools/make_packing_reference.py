#!/usr/bin/env python3
"""make_packing_reference.py MODEL_DIR MODE: documents of varied length (some with a masked prompt) and
what training on them must give whether they are packed or not. MODE is `full` (every parameter),
`lora` or `qlora` (peft LoRA with MODEL_DIR/reference.json's r, alpha and targets, initialised from
MODEL_DIR/lora/adapter_init.safetensors; `qlora` on the base whose quantized weights are replaced by
bitsandbytes' own dequantization, MODEL_DIR/qlora/dequantized.safetensors, as make_qlora_reference.py
trains it).

Each document is trained alone: its own row (right-padded), positions from 0, eager attention only
inside it and its sliding window, closed by EOS as packing closes it (EOS is a target where the
document ends with loss). One step = all documents; loss = summed token loss / target tokens.

Writes MODEL_DIR/packing/:
  docs.jsonl                 the documents, tokenized, without the EOS (packing adds it)
  MODE.safetensors           exact64.<name>: the float64 training after STEPS AdamW steps, rounded to
                             f32; torch32.<name>: torch's float32 training; for `full` also
                             bf16.<name>: bf16 mixed precision as tools/make_bf16_reference.py trains
                             (f32 master, bf16 compute copy, f32 gradient sums)
  MODE.json                  losses per step (f64, f32, bf16), torch f32's distance from the f64 answer
                             per tensor, the elements Adam makes ill-conditioned (see make_exact64.py),
                             bf16's re-batching spread (one document per micro-batch against all in one),
                             the settings
<name> is the HF parameter name (full) or peft's saved key (lora, qlora)."""
import json, os, sys
import numpy as np
import torch
from peft import LoraConfig, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import load_file, save_file
from transformers import MistralForCausalLM

model_dir, mode = sys.argv[1], sys.argv[2]
assert mode in ("full", "lora", "qlora"), mode
out = f"{model_dir}/packing"
os.makedirs(out, exist_ok=True)
config = json.load(open(f"{model_dir}/config.json"))
EOS, BOS, STEPS = config["eos_token_id"], config["bos_token_id"], 3
OPT = dict(lr=5e-3 if mode == "full" else 2e-2, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.05)
CLIP = 0.3
ILL_CONDITIONED = 1e-5  # 10 x Adam's eps: see make_exact64.py

g = torch.Generator().manual_seed(7)
lengths = [18, 9, 15, 12, 17, 6, 14]
prompt = [0, 4, 0, 7, 0, 2, 5]  # masked leading tokens per document
docs = []
for n, p in zip(lengths, prompt):
    ids = [BOS] + torch.randint(3, config["vocab_size"], (n - 1,), generator=g).tolist()
    docs.append({"input_ids": ids, "labels": [-100] * p + ids[p:]})
with open(f"{out}/docs.jsonl", "w") as f:
    for d in docs:
        f.write(json.dumps(d) + "\n")

# What the model trains on: each document closed by EOS.
rows = [(d["input_ids"] + [EOS], d["labels"] + [EOS if d["labels"][-1] != -100 else -100]) for d in docs]
target_tokens = sum(sum(1 for l in r[1][1:] if l != -100) for r in rows)


def batch(part):
    width = max(len(r[0]) for r in part)
    ids = torch.tensor([r[0] + [0] * (width - len(r[0])) for r in part])
    labels = torch.tensor([r[1] + [-100] * (width - len(r[1])) for r in part])
    return ids, labels[:, 1:].reshape(-1)


def model(dtype):
    m = MistralForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32, attn_implementation="eager")
    if mode == "qlora":
        dq = load_file(f"{model_dir}/qlora/dequantized.safetensors")
        with torch.no_grad():
            for k, v in m.named_parameters():
                if k in dq:
                    v.copy_(dq[k])
    if mode != "full":
        lc = json.load(open(f"{model_dir}/reference.json"))["lora"]
        m = get_peft_model(m, LoraConfig(r=lc["r"], lora_alpha=lc["alpha"], target_modules=lc["targets"], lora_dropout=0.0, bias="none", task_type="CAUSAL_LM"))
        set_peft_model_state_dict(m, load_file(f"{model_dir}/lora/adapter_init.safetensors"))
    return m.to(dtype)


def final(m):
    if mode == "full":
        return {n: t.detach().float().contiguous() for n, t in m.named_parameters()}
    return {k: v.detach().float().contiguous() for k, v in get_peft_model_state_dict(m).items()}


def train(dtype):
    """Every document in one batch; also each parameter's smallest non-zero clipped |gradient|."""
    m = model(dtype)
    named = [(n.replace(".default", ""), p) for n, p in m.named_parameters() if p.requires_grad]
    params = [p for _, p in named]
    opt = torch.optim.AdamW(params, **OPT)
    ids, labels = batch(rows)
    losses, smallest = [], {n: torch.full_like(p, float("inf")) for n, p in named}
    for _ in range(STEPS):
        opt.zero_grad()
        logits = m(input_ids=ids).logits
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels, ignore_index=-100, reduction="sum") / target_tokens
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, CLIP)
        for n, p in named:
            a = p.grad.abs()
            smallest[n] = torch.minimum(smallest[n], torch.where(a == 0, torch.inf, a))
        opt.step()
        losses.append(float(loss))
    return final(m), losses, smallest


def train_bf16(split):
    """bf16 mixed precision as make_bf16_reference.py: `split` documents per micro-batch."""
    master, compute = model(torch.float32), model(torch.bfloat16)
    f32_modules = dict(master.named_modules())
    for name, module in compute.named_modules():  # RoPE's inv_freq stays f32, as FSDP2 keeps it
        for attr in ("inv_freq", "original_inv_freq"):
            if isinstance(getattr(module, attr, None), torch.Tensor):
                setattr(module, attr, getattr(f32_modules[name], attr).clone())
    names = [n for n, t in master.named_parameters() if t.requires_grad]
    mp, cp = dict(master.named_parameters()), dict(compute.named_parameters())
    params = [mp[n] for n in names]
    opt = torch.optim.AdamW(params, **OPT)
    losses = []
    for _ in range(STEPS):
        with torch.no_grad():
            for n in names:
                cp[n].copy_(mp[n].to(torch.bfloat16))
        grads, total = {n: torch.zeros_like(mp[n]) for n in names}, 0.0
        for i in range(0, len(rows), split):
            ids, labels = batch(rows[i:i + split])
            compute.zero_grad()
            logits = compute(input_ids=ids).logits.float()
            loss_sum = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels, ignore_index=-100, reduction="sum")
            (loss_sum / target_tokens).backward()
            total += loss_sum.item()
            for n in names:
                grads[n] += cp[n].grad.float()
        for n in names:
            mp[n].grad = grads[n]
        torch.nn.utils.clip_grad_norm_(params, CLIP)
        opt.step()
        opt.zero_grad()
        losses.append(total / target_tokens)
    return final(master), losses


def distance(ours, theirs):
    a, b = ours.double().numpy(), theirs.double().numpy()
    return {"norm_rel": float(np.linalg.norm(a - b) / np.linalg.norm(b)), "max_rel": float(np.abs(a - b).max() / np.abs(b).max())}


exact, losses64, smallest = train(torch.float64)
f32, losses32, _ = train(torch.float32)
tensors = {**{f"exact64.{n}": t for n, t in exact.items()}, **{f"torch32.{n}": t for n, t in f32.items()}}
meta = {
    "what": __doc__,
    "mode": mode,
    "documents": len(docs),
    "tokens_with_eos": sum(len(r[0]) for r in rows),
    "lengths_with_eos": [len(r[0]) for r in rows],
    "target_tokens": target_tokens,
    "steps": STEPS,
    "optimizer": {"name": "torch.optim.AdamW", **OPT},
    "max_grad_norm": CLIP,
    "lr_schedule": "constant",
    "losses_f64": losses64,
    "losses_torch_f32": losses32,
    "torch_f32_from_f64": {n: distance(f32[n], exact[n]) for n in exact},
    "ill_conditioned": {
        "threshold": ILL_CONDITIONED,
        "elements": {n: torch.nonzero(s.reshape(-1) < ILL_CONDITIONED).reshape(-1).tolist() for n, s in smallest.items() if (s < ILL_CONDITIONED).any()},
    },
    "made_with": {"torch": torch.__version__, "transformers": __import__("transformers").__version__, "peft": __import__("peft").__version__},
}
if mode == "full":
    bf16, losses_bf16 = train_bf16(len(rows))
    rebatched, losses_rebatched = train_bf16(1)
    tensors.update({f"bf16.{n}": t for n, t in bf16.items()})
    meta["losses_bf16"] = losses_bf16
    meta["bf16_rebatched"] = {
        "what": "one document per micro-batch against all in one: torch's own bf16 spread",
        "worst_norm_rel": max(distance(rebatched[n], bf16[n])["norm_rel"] for n in bf16),
        "worst_max_rel": max(distance(rebatched[n], bf16[n])["max_rel"] for n in bf16),
        "worst_loss_err": max(abs(a - b) for a, b in zip(losses_rebatched, losses_bf16)),
    }
save_file(tensors, f"{out}/{mode}.safetensors")
json.dump(meta, open(f"{out}/{mode}.json", "w"), indent=1)
print(json.dumps({"losses": losses64, "worst_torch_f32": max(d["norm_rel"] for d in meta["torch_f32_from_f64"].values()), "rebatched": meta.get("bf16_rebatched")}))
