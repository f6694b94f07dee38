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
import json, sys, torch, numpy as np
import bitsandbytes.functional as F
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, MistralForCausalLM
from peft import LoraConfig, get_peft_model, set_peft_model_state_dict, get_peft_model_state_dict

ref = sys.argv[1]
base_dir = f"{ref}/qlora/nf4-bf16"
meta = json.load(open(f"{ref}/reference.json"))
rows = [json.loads(l) for l in open(f"{ref}/data.jsonl")]
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


def build():
    """(f32 master adapters, bf16 compute model); the base's values are bf16, so the f32 model holds them exactly."""
    models = []
    for dtype in (torch.float32, torch.bfloat16):
        m = MistralForCausalLM.from_pretrained(ref, torch_dtype=torch.float32, attn_implementation="eager")
        with torch.no_grad():
            for k, v in m.named_parameters():
                v.copy_(base[k].float())
        m = get_peft_model(m, LoraConfig(r=lc["r"], lora_alpha=lc["alpha"], target_modules=lc["targets"], lora_dropout=0.0, bias="none", task_type="CAUSAL_LM"))
        set_peft_model_state_dict(m, load_file(f"{ref}/lora/adapter_init.safetensors"))
        models.append(m.to(dtype))
    master, compute = models
    f32_buffers = dict(master.named_modules())
    for name, module in compute.named_modules():  # RoPE's inv_freq stays f32 (make_bf16_reference.py)
        for attr in ("inv_freq", "original_inv_freq"):
            if isinstance(getattr(module, attr, None), torch.Tensor):
                setattr(module, attr, getattr(f32_buffers[name], attr).clone())
    return master, compute


def train(split):
    master, compute = build()
    names = [n for n, t in master.named_parameters() if t.requires_grad]
    mp = dict(master.named_parameters()); cp = dict(compute.named_parameters())
    params = [mp[n] for n in names]
    o = meta["optimizer"]; per = meta["examples_per_step"]
    opt = torch.optim.AdamW(params, lr=lc["lr"], betas=o["betas"], eps=o["eps"], weight_decay=o["weight_decay"])
    losses, norms = [], []
    for s in range(meta["steps"]):
        with torch.no_grad():
            for n in names:
                cp[n].copy_(mp[n].to(torch.bfloat16))
        step_rows = rows[s * per:(s + 1) * per]
        ntok = sum(sum(1 for l in r["labels"][1:] if l != -100) for r in step_rows)
        grads = {n: torch.zeros_like(mp[n]) for n in names}
        total = 0.0
        for i in range(0, per, split):
            part = step_rows[i:i + split]
            ids = torch.tensor([r["input_ids"] for r in part]); lab = torch.tensor([r["labels"] for r in part])
            compute.zero_grad()
            logits = compute(input_ids=ids).logits.float()
            loss_sum = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), lab[:, 1:].reshape(-1), ignore_index=-100, reduction="sum")
            (loss_sum / ntok).backward()
            total += loss_sum.item()
            for n in names:
                grads[n] += cp[n].grad.float()
        for n in names:
            mp[n].grad = grads[n]
        norms.append(torch.nn.utils.clip_grad_norm_(params, meta["max_grad_norm"]).item())
        opt.step(); opt.zero_grad()
        losses.append(total / ntok)
    return {k: v.detach().clone().contiguous() for k, v in get_peft_model_state_dict(master).items()}, losses, norms


def dist(a, b):
    worst, wmax = 0.0, 0.0
    for k in b:
        d = a[k].double().numpy() - b[k].double().numpy(); bb = b[k].double().numpy()
        worst = max(worst, float(np.linalg.norm(d) / np.linalg.norm(bb))); wmax = max(wmax, float(np.abs(d).max() / np.abs(bb).max()))
    return {"norm_rel": worst, "max_rel": wmax}


per = meta["examples_per_step"]
final, losses, norms = train(per)
rebatched = {}
for split in sorted({d for d in range(1, per) if per % d == 0}):
    other, ol, _ = train(split)
    rebatched[str(split)] = {**dist(other, final), "loss_err": max(abs(a - b) for a, b in zip(ol, losses))}
f32 = load_file(f"{ref}/qlora/adapter_model.safetensors")
info = {"what": __doc__.split("\n\n")[0], "losses": losses, "grad_norms_before_clip": norms, "rebatched": rebatched,
        "f32_qlora_vs_bf16": dist(f32, final),
        "made_with": {m: __import__(m).__version__ for m in ("torch", "transformers", "peft", "bitsandbytes")}}
save_file(final, f"{ref}/qlora/bf16.safetensors")
json.dump(info, open(f"{ref}/qlora/bf16.json", "w"), indent=2)
print(json.dumps({k: info[k] for k in ("losses", "rebatched", "f32_qlora_vs_bf16")}, indent=1))
