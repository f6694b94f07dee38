#!/usr/bin/env python3
"""make_exact64.py FIXTURE_DIR: the fixture's reference training (full fine-tuning, LoRA and, where the
fixture has qlora/, QLoRA) in float64, exact up to f64 rounding, plus where Adam makes the f32 answer
ill-conditioned. QLoRA is LoRA on the model whose quantized weights are bitsandbytes' dequantization
(qlora/dequantized.safetensors, exact in f32 and so in f64), as tools/make_qlora_reference.py trains it.
Writes into FIXTURE_DIR:

- exact64.f32.safetensors: full.final.*, lora.* and qlora.* after the steps, rounded to f32;
- exact64.json: how far torch's own f32 reference lies from that answer (worst tensor);
- exact64.ill_conditioned.json: per mode and tensor, the flat indices of the elements whose clipped
  gradient is non-zero but below ILL_CONDITIONED (100 x Adam's eps) at some step.

Why the last file: AdamW's update is lr * m / (sqrt(v) + eps). Where |g| is near eps, the update
depends on g itself, not only on its sign, so a relative rounding error of g becomes an update error of
up to ~lr. Such gradients are sums that cancel (4.7e-8 out of terms of order 1e-1 through RMSNorm's
backward on tiny-mistral), and any f32 summation order lands tens of percent away on them: torch's own
f32 run and torch with per-example micro-batches disagree there by 5.6e-4 after 3 steps. Elsewhere a
correct f32 trainer stays within 1e-5 of this answer (tests/common/mod.rs holds it to that).
"""
import json, os, sys
import torch
from peft import get_peft_model_state_dict
from safetensors.torch import load_file, save_file
from transformers import MistralForCausalLM
from reference_training import Fixture, distance, loss_sum

ILL_CONDITIONED = 1e-6

fixture = Fixture(sys.argv[1])
meta = fixture.meta


def train(forward, named_params, lr):
    """AdamW + clip_grad_norm_ as reference.json says; returns each parameter's smallest non-zero
    clipped |gradient| over the steps (inf where it never had one)."""
    names, params = zip(*named_params)
    opt = fixture.adamw(params, lr)
    smallest = {n: torch.full_like(p, float("inf")) for n, p in named_params}
    for [(ids, labels)], targets in fixture.steps(fixture.per_step):
        opt.zero_grad()
        loss = loss_sum(forward(ids), labels) / targets
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, meta["max_grad_norm"])
        for n, p in zip(names, params):
            g = p.grad.abs()
            smallest[n] = torch.minimum(smallest[n], torch.where(g == 0, torch.inf, g))
        opt.step()
    return smallest


def ill_conditioned(smallest):
    return {n: torch.nonzero(s.reshape(-1) < ILL_CONDITIONED).reshape(-1).tolist() for n, s in smallest.items() if (s < ILL_CONDITIONED).any()}


def load(dequantized=None):
    model = MistralForCausalLM.from_pretrained(fixture.path, torch_dtype=torch.float64, attn_implementation="eager")
    if dequantized is not None:
        with torch.no_grad():
            for name, param in model.named_parameters():
                if name in dequantized:
                    param.copy_(dequantized[name].double())
    return model


exact, conditioning = {}, {"threshold": ILL_CONDITIONED, "what": "flat indices of the elements whose clipped gradient is non-zero and below threshold at some step"}

full = load()
conditioning["full"] = ill_conditioned(train(lambda ids: full(input_ids=ids).logits, list(full.named_parameters()), meta["full"]["lr"]))
for n, t in full.named_parameters():
    exact[f"full.final.{n}"] = t.detach().float().contiguous()

def train_lora(mode, base):
    """peft LoRA on `base` from the fixture's adapter init: the answer under `mode.*` and its ill-conditioned elements."""
    peft_model = fixture.with_lora(base)
    trainable = [(n, p) for n, p in peft_model.named_parameters() if p.requires_grad]
    smallest = train(lambda ids: peft_model(input_ids=ids).logits, trainable, meta["lora"]["lr"])
    # peft's saved names drop the adapter name (".default") that named_parameters() carries.
    conditioning[mode] = ill_conditioned({n.replace(".default", ""): s for n, s in smallest.items()})
    for k, v in get_peft_model_state_dict(peft_model).items():
        exact[f"{mode}.{k}"] = v.detach().float().contiguous()


train_lora("lora", load())
has_qlora = os.path.exists(f"{fixture.path}/qlora/dequantized.safetensors")
if has_qlora:
    train_lora("qlora", load(load_file(f"{fixture.path}/qlora/dequantized.safetensors")))

save_file(exact, f"{fixture.path}/exact64.f32.safetensors")
json.dump(conditioning, open(f"{fixture.path}/exact64.ill_conditioned.json", "w"))


def from_answer(f32, prefix):
    """Worst per-tensor distance of torch's f32 tensors from the exact answer."""
    return distance(f32, {k: exact[prefix + k] for k in f32})


f32 = load_file(f"{fixture.path}/reference.safetensors")
full32 = {k[len("full.final."):]: v for k, v in f32.items() if k.startswith("full.final.")}
floor = {"full": from_answer(full32, "full.final."), "lora": from_answer(load_file(f"{fixture.path}/lora/adapter_model.safetensors"), "lora.")}
if has_qlora:
    floor["qlora"] = from_answer(load_file(f"{fixture.path}/qlora/adapter_model.safetensors"), "qlora.")
json.dump({"what": "worst per-tensor distance of torch's own f32 reference from the f64 training", **floor}, open(f"{fixture.path}/exact64.json", "w"), indent=2)
print(json.dumps({**floor, "ill_conditioned": {m: sum(len(v) for v in conditioning[m].values()) for m in floor}}))
