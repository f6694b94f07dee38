#!/usr/bin/env python3
"""make_f64_reference.py REFERENCE_DIR: the same training as make_fixtures.py's reference, in float64
(exact up to f64 rounding), written to REFERENCE_DIR/exact64.safetensors (full.final.* and lora.*) with
exact64.json holding how far torch's own f32 reference lies from it (per-tensor worst norm-rel and max-rel).
A run is then held to 'as close to the exact answer as torch f32 is' (with a factor)."""
import json, sys, torch, numpy as np
from safetensors.torch import load_file, save_file
from transformers import MistralForCausalLM
from peft import LoraConfig, get_peft_model, set_peft_model_state_dict, get_peft_model_state_dict
ref = sys.argv[1]; meta = json.load(open(f"{ref}/reference.json"))
rows = [json.loads(l) for l in open(f"{ref}/data.jsonl")]
def train(model, params, lr):
    o = meta["optimizer"]; per = meta["examples_per_step"]
    opt = torch.optim.AdamW(params, lr=lr, betas=o["betas"], eps=o["eps"], weight_decay=o["weight_decay"])
    for s in range(meta["steps"]):
        r = rows[s*per:(s+1)*per]
        ids = torch.tensor([x["input_ids"] for x in r]); lab = torch.tensor([x["labels"] for x in r])
        opt.zero_grad()
        lg = model(input_ids=ids).logits
        sl = lab[:, 1:].reshape(-1)
        loss = torch.nn.functional.cross_entropy(lg[:, :-1].reshape(-1, lg.shape[-1]), sl, ignore_index=-100, reduction="sum") / (sl != -100).sum()
        loss.backward(); torch.nn.utils.clip_grad_norm_(params, meta["max_grad_norm"]); opt.step()
out = {}
m = MistralForCausalLM.from_pretrained(ref, torch_dtype=torch.float64, attn_implementation="eager")
train(m, list(m.parameters()), meta["full"]["lr"])
for n, t in m.named_parameters(): out[f"full.final.{n}"] = t.detach().clone().contiguous()
base = MistralForCausalLM.from_pretrained(ref, torch_dtype=torch.float64, attn_implementation="eager")
lc = meta["lora"]
pm = get_peft_model(base, LoraConfig(r=lc["r"], lora_alpha=lc["alpha"], target_modules=lc["targets"], lora_dropout=0.0, bias="none", task_type="CAUSAL_LM"))
set_peft_model_state_dict(pm, {k: v.double() for k, v in load_file(f"{ref}/lora/adapter_init.safetensors").items()})
train(pm, [t for t in pm.parameters() if t.requires_grad], lc["lr"])
for k, v in get_peft_model_state_dict(pm).items(): out[f"lora.{k}"] = v.detach().clone().contiguous()
save_file(out, f"{ref}/exact64.safetensors")
def floor(f32, prefix):
    worst, wmax = 0.0, 0.0
    for k, v in f32.items():
        b = out[prefix + k].numpy(); d = v.double().numpy() - b
        worst = max(worst, float(np.linalg.norm(d) / np.linalg.norm(b))); wmax = max(wmax, float(np.abs(d).max() / np.abs(b).max()))
    return {"norm_rel": worst, "max_rel": wmax}
f32 = load_file(f"{ref}/reference.safetensors")
full32 = {k[len("full.final."):]: v for k, v in f32.items() if k.startswith("full.final.")}
res = {"full": floor(full32, "full.final."), "lora": floor(load_file(f"{ref}/lora/adapter_model.safetensors"), "lora.")}
json.dump({"what": "worst per-tensor distance of torch's own f32 reference from the f64 training", **res}, open(f"{ref}/exact64.json", "w"), indent=2)
print(json.dumps(res))
