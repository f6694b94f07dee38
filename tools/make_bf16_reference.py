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
import json, sys
import torch
from safetensors.torch import load_file, save_file
from transformers import MistralForCausalLM
from peft import get_peft_model_state_dict
from reference_training import Fixture, distance, rebatched, train_mixed

fixture = Fixture(sys.argv[1])
ref, meta = fixture.path, fixture.meta


def train(mode, split):
    master = MistralForCausalLM.from_pretrained(ref, torch_dtype=torch.float32, attn_implementation="eager")
    if mode == "lora":
        master = fixture.with_lora(master)
    names = [n for n, t in master.named_parameters() if t.requires_grad]
    losses, norms = train_mixed(fixture, master, names, meta[mode]["lr"], split)
    if mode == "full":
        final = {n: t.detach().clone() for n, t in master.named_parameters()}
    else:
        final = {k: v.detach().clone() for k, v in get_peft_model_state_dict(master).items()}
    return final, losses, norms


out, info = {}, {"what": __doc__.split("\n\n")[0], "examples_per_step": fixture.per_step}
f32 = load_file(f"{ref}/reference.safetensors")
f32_final = {"full": {k[len("full.final."):]: v for k, v in f32.items() if k.startswith("full.final.")},
             "lora": load_file(f"{ref}/lora/adapter_model.safetensors")}
for mode in ("full", "lora"):
    final, losses, norms = train(mode, fixture.per_step)
    prefix = "full.final." if mode == "full" else "lora."
    out.update({prefix + k: v.contiguous() for k, v in final.items()})
    info[mode] = {"losses": losses, "grad_norms_before_clip": norms,
                  "rebatched": rebatched(fixture, lambda split: train(mode, split)[:2], final, losses),
                  "f32_reference_vs_bf16": {**distance(f32_final[mode], final), "loss_err": max(abs(a - b) for a, b in zip(meta[mode]["losses"], losses))}}
save_file(out, f"{ref}/bf16.safetensors")
json.dump(info, open(f"{ref}/bf16.json", "w"), indent=2)
print(json.dumps({m: {k: info[m][k] for k in ("losses", "rebatched", "f32_reference_vs_bf16")} for m in ("full", "lora")}, indent=1))
