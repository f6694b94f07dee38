#!/usr/bin/env python3
"""make_bf16_reference.py REFERENCE_DIR: mixed-precision training as PyTorch FSDP2 does it with
MixedPrecisionPolicy(param_dtype=bfloat16, reduce_dtype=float32): f32 master parameters (what AdamW
updates), a bf16 copy made from them before every forward, forward and backward in bf16 (transformers'
own upcasts: RMSNorm and softmax in f32, the loss on f32 logits), bf16 gradients cast to f32 and summed
over micro-batches in f32, clipping and torch.optim.AdamW in f32. Same data, hyper-parameters and steps
as REFERENCE_DIR/reference.json (make_fixtures.py).

Writes REFERENCE_DIR/bf16.safetensors (full.final.<name>: f32 master after the steps; lora.<peft key>)
and bf16.json: per-step losses and grad norms, and how far torch itself moves when the same step is
split into micro-batches differently (the noise that any other bf16 implementation must be allowed).

RoPE's inv_freq stays in f32, as FSDP2 (which casts parameters, not buffers) and
from_pretrained(torch_dtype=bfloat16) keep it; `model.to(torch.bfloat16)` would round that buffer
to bf16 and move positions by up to 0.4% of their angle."""
import json, sys, torch, numpy as np
from safetensors.torch import load_file, save_file
from transformers import MistralForCausalLM
from peft import LoraConfig, get_peft_model, set_peft_model_state_dict, get_peft_model_state_dict

ref = sys.argv[1]
meta = json.load(open(f"{ref}/reference.json"))
rows = [json.loads(l) for l in open(f"{ref}/data.jsonl")]


def build(mode):
    """(master f32 model, bf16 compute model, names of trainable params)"""
    models = []
    for dtype in (torch.float32, torch.bfloat16):
        m = MistralForCausalLM.from_pretrained(ref, torch_dtype=torch.float32, attn_implementation="eager")
        if mode == "lora":
            lc = meta["lora"]
            m = get_peft_model(m, LoraConfig(r=lc["r"], lora_alpha=lc["alpha"], target_modules=lc["targets"], lora_dropout=0.0, bias="none", task_type="CAUSAL_LM"))
            set_peft_model_state_dict(m, load_file(f"{ref}/lora/adapter_init.safetensors"))
        models.append(m.to(dtype))
    master, compute = models
    # `.to(bfloat16)` also rounds RoPE's inv_freq buffers to bf16; FSDP2 casts parameters only,
    # and from_pretrained(torch_dtype=bfloat16) keeps them f32 too: take the f32 master's.
    f32_buffers = dict(master.named_modules())
    for name, module in compute.named_modules():
        for attr in ("inv_freq", "original_inv_freq"):
            if isinstance(getattr(module, attr, None), torch.Tensor):
                setattr(module, attr, getattr(f32_buffers[name], attr).clone())
    names = [n for n, t in master.named_parameters() if t.requires_grad]
    return master, compute, names


def train(mode, split):
    master, compute, names = build(mode)
    mp = dict(master.named_parameters()); cp = dict(compute.named_parameters())
    params = [mp[n] for n in names]
    lr = meta[mode]["lr"]; o = meta["optimizer"]; per = meta["examples_per_step"]
    opt = torch.optim.AdamW(params, lr=lr, betas=o["betas"], eps=o["eps"], weight_decay=o["weight_decay"])
    losses, norms = [], []
    for s in range(meta["steps"]):
        with torch.no_grad():  # the bf16 copy of the f32 master, as FSDP2 casts before its all-gather
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
            sl = lab[:, 1:].reshape(-1)
            loss_sum = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), sl, ignore_index=-100, reduction="sum")
            (loss_sum / ntok).backward()
            total += loss_sum.item()
            for n in names:  # bf16 gradient, reduced and accumulated in f32
                grads[n] += cp[n].grad.float()
        for n in names:
            mp[n].grad = grads[n]
        norms.append(torch.nn.utils.clip_grad_norm_(params, meta["max_grad_norm"]).item())
        opt.step(); opt.zero_grad()
        losses.append(total / ntok)
    if mode == "full":
        final = {n: mp[n].detach().clone() for n in names}
    else:
        final = {k: v.detach().clone() for k, v in get_peft_model_state_dict(master).items()}
    return final, losses, norms


def dist(a, b):
    worst, wmax = 0.0, 0.0
    for k in b:
        d = a[k].double().numpy() - b[k].double().numpy(); bb = b[k].double().numpy()
        worst = max(worst, float(np.linalg.norm(d) / np.linalg.norm(bb))); wmax = max(wmax, float(np.abs(d).max() / np.abs(bb).max()))
    return {"norm_rel": worst, "max_rel": wmax}


out, info = {}, {"what": __doc__.split("\n\n")[0], "examples_per_step": meta["examples_per_step"]}
f32 = load_file(f"{ref}/reference.safetensors")
f32_final = {"full": {k[len("full.final."):]: v for k, v in f32.items() if k.startswith("full.final.")},
             "lora": load_file(f"{ref}/lora/adapter_model.safetensors")}
for mode in ("full", "lora"):
    per = meta["examples_per_step"]
    final, losses, norms = train(mode, per)
    prefix = "full.final." if mode == "full" else "lora."
    out.update({prefix + k: v.contiguous() for k, v in final.items()})
    splits = {}
    for split in sorted({d for d in range(1, per) if per % d == 0}):
        other, ol, _ = train(mode, split)
        splits[str(split)] = {**dist(other, final), "loss_err": max(abs(a - b) for a, b in zip(ol, losses))}
    info[mode] = {"losses": losses, "grad_norms_before_clip": norms,
                  "rebatched": splits,
                  "f32_reference_vs_bf16": {**dist(f32_final[mode], final), "loss_err": max(abs(a - b) for a, b in zip(meta[mode]["losses"], losses))}}
save_file(out, f"{ref}/bf16.safetensors")
json.dump(info, open(f"{ref}/bf16.json", "w"), indent=2)
print(json.dumps({m: {k: info[m][k] for k in ("losses", "rebatched", "f32_reference_vs_bf16")} for m in ("full", "lora")}, indent=1))
