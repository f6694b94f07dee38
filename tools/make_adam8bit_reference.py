#!/usr/bin/env python3
"""make_adam8bit_reference.py MODEL_DIR OUT_DIR: full fine-tuning of the model at MODEL_DIR on its data
(its reference.json's settings: steps, examples per step, lr, betas, eps, weight decay, clipping) with
bitsandbytes' AdamW8bit at its defaults (blockwise 8-bit m and v, blocks of 256, signed dynamic map for
m and unsigned for v, one f32 absmax per block; tensors under min_8bit_size=4096 elements keep 32-bit
states), in f32 on the CPU; also torch AdamW (32-bit states) and a second bnb run (determinism).
Written: adam8bit.safetensors (bnb8.<name>, torch32.<name>: the parameters after the last step;
qmap.signed, qmap.unsigned: bitsandbytes' two dynamic maps), adam8bit.json (losses, distances, states).

Then the same for LoRA with adapters large enough for 8-bit states (r = 64, alpha = 128, reference.json's
targets and LoRA lr, from a seeded random init of A and B, std 0.05): lora_r64_init.safetensors (the init,
peft names), lora_r64.safetensors (bnb8.<peft name>, torch32.<peft name>), lora_r64.json."""
import json, sys, torch
import bitsandbytes as bnb
import bitsandbytes.functional as F
import transformers
from peft import LoraConfig, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import load_file, save_file
from transformers import MistralForCausalLM
from reference_training import Fixture, loss_sum

model_dir, out = sys.argv[1:]
fixture = Fixture(model_dir)
meta, rows = fixture.meta, fixture.rows
o = meta["optimizer"]; per = meta["examples_per_step"]; lr = meta["full"]["lr"]
LORA_R, LORA_ALPHA = 64, 128


def lora_model():
    m = MistralForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32, attn_implementation="eager")
    m = get_peft_model(m, LoraConfig(r=LORA_R, lora_alpha=LORA_ALPHA, target_modules=meta["lora"]["targets"], lora_dropout=0.0, bias="none", task_type="CAUSAL_LM"))
    set_peft_model_state_dict(m, load_file(f"{out}/lora_r64_init.safetensors"))
    return m


def train(kind, lora=False):
    torch.manual_seed(0)
    m = lora_model() if lora else MistralForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32, attn_implementation="eager")
    ps = [p for p in m.parameters() if p.requires_grad]
    lr = meta["lora"]["lr"] if lora else meta["full"]["lr"]
    if kind == "bnb8":
        opt = bnb.optim.AdamW8bit(ps, lr=lr, betas=tuple(o["betas"]), eps=o["eps"], weight_decay=o["weight_decay"])
    else:
        opt = torch.optim.AdamW(ps, lr=lr, betas=o["betas"], eps=o["eps"], weight_decay=o["weight_decay"])
    losses = []
    for s in range(meta["steps"]):
        r = rows[s * per:(s + 1) * per]
        ids = torch.tensor([x["input_ids"] for x in r]); lab = torch.tensor([x["labels"] for x in r])
        opt.zero_grad()
        loss = loss_sum(m(input_ids=ids).logits, lab) / (lab[:, 1:] != -100).sum()
        loss.backward(); torch.nn.utils.clip_grad_norm_(ps, meta["max_grad_norm"]); opt.step(); losses.append(float(loss))
    named = {k: v.detach().clone().contiguous() for k, v in get_peft_model_state_dict(m).items()} if lora else \
        {n: p.detach().clone().contiguous() for n, p in m.named_parameters()}
    state = {}
    if kind == "bnb8":  # peft's saved names are named_parameters()'s without the adapter name
        for n, p in m.named_parameters():
            if p.requires_grad:
                state[n.replace(".default", "")] = {k: (list(v.shape), str(v.dtype)) for k, v in opt.state[p].items() if torch.is_tensor(v)}
    return named, losses, state


b1, l1, st = train("bnb8"); b2, _, _ = train("bnb8"); t32, l32, _ = train("torch")
init = MistralForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32).state_dict()
rel = lambda a, b: float(torch.linalg.norm((a - b).double()) / torch.linalg.norm(b.double()))
dist = {n: {"bnb_vs_torch32": rel(b1[n], t32[n]), "update_norm_rel_bnb_vs_torch32": rel(b1[n] - init[n], t32[n] - init[n]),
            "bnb_rerun": rel(b2[n], b1[n]), "states": st.get(n)} for n in b1}
qmaps = {"qmap.signed": F.create_dynamic_map(signed=True), "qmap.unsigned": F.create_dynamic_map(signed=False)}
save_file({**{f"bnb8.{n}": t for n, t in b1.items()}, **{f"torch32.{n}": t for n, t in t32.items()}, **qmaps}, f"{out}/adam8bit.safetensors")
json.dump({"what": "bitsandbytes AdamW8bit (defaults) vs torch AdamW, full fine-tuning, reference.json's settings",
           "made_with": {"torch": torch.__version__, "transformers": transformers.__version__, "bitsandbytes": bnb.__version__},
           "losses_bnb8": l1, "losses_torch32": l32, "per_tensor": dist}, open(f"{out}/adam8bit.json", "w"), indent=1)

torch.manual_seed(64)
shapes = {k: v.shape for k, v in get_peft_model_state_dict(get_peft_model(
    MistralForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32),
    LoraConfig(r=LORA_R, lora_alpha=LORA_ALPHA, target_modules=meta["lora"]["targets"], task_type="CAUSAL_LM"))).items()}
lora_init = {k: (0.05 * torch.randn(shape)).contiguous() for k, shape in sorted(shapes.items())}
save_file(lora_init, f"{out}/lora_r64_init.safetensors")
lb1, ll1, lst = train("bnb8", lora=True); lt32, ll32, _ = train("torch", lora=True)
lora_dist = {n: {"update_norm_rel_bnb_vs_torch32": rel(lb1[n] - lora_init[n], lt32[n] - lora_init[n]), "states": lst.get(n)} for n in lb1}
save_file({**{f"bnb8.{n}": t for n, t in lb1.items()}, **{f"torch32.{n}": t for n, t in lt32.items()}}, f"{out}/lora_r64.safetensors")
json.dump({"what": f"bitsandbytes AdamW8bit (defaults) vs torch AdamW, LoRA r={LORA_R} alpha={LORA_ALPHA} on reference.json's targets",
           "r": LORA_R, "alpha": LORA_ALPHA, "targets": meta["lora"]["targets"], "lr": meta["lora"]["lr"],
           "losses_bnb8": ll1, "losses_torch32": ll32, "per_tensor": lora_dist}, open(f"{out}/lora_r64.json", "w"), indent=1)

w = max(dist.values(), key=lambda d: d["update_norm_rel_bnb_vs_torch32"])
print(json.dumps({"worst_update_gap_bnb_vs_torch32": w["update_norm_rel_bnb_vs_torch32"], "worst_rerun": max(d["bnb_rerun"] for d in dist.values()),
                  "eight_bit_tensors": [n for n, d in dist.items() if d["states"] and any("uint8" in s[1] for s in d["states"].values())],
                  "lora_eight_bit_tensors": sum(1 for d in lora_dist.values() if d["states"] and any("uint8" in s[1] for s in d["states"].values())),
                  "lora_worst_update_gap": max(d["update_norm_rel_bnb_vs_torch32"] for d in lora_dist.values())}))
