#!/usr/bin/env python3
"""make_adam8bit_reference.py MODEL_DIR OUT_DIR: full fine-tuning of the model at MODEL_DIR on its data
(its reference.json's settings: steps, examples per step, lr, betas, eps, weight decay, clipping) with
bitsandbytes' AdamW8bit at its defaults (blockwise 8-bit m and v, blocks of 256, signed dynamic map for
m and unsigned for v, one f32 absmax per block; tensors under min_8bit_size=4096 elements keep 32-bit
states), in f32 on the CPU; also torch AdamW (32-bit states) and a second bnb run (determinism).
Written: adam8bit.safetensors (bnb8.<name>, torch32.<name>: the parameters after the last step;
qmap.signed, qmap.unsigned: bitsandbytes' two dynamic maps), adam8bit.json (losses, distances, states)."""
import json, sys, torch
import bitsandbytes as bnb
import bitsandbytes.functional as F
import transformers
from safetensors.torch import save_file
from transformers import MistralForCausalLM

model_dir, out = sys.argv[1:]
meta = json.load(open(f"{model_dir}/reference.json"))
rows = [json.loads(l) for l in open(f"{model_dir}/data.jsonl")]
o = meta["optimizer"]; per = meta["examples_per_step"]; lr = meta["full"]["lr"]


def train(kind):
    torch.manual_seed(0)
    m = MistralForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32, attn_implementation="eager")
    ps = list(m.parameters())
    if kind == "bnb8":
        opt = bnb.optim.AdamW8bit(ps, lr=lr, betas=tuple(o["betas"]), eps=o["eps"], weight_decay=o["weight_decay"])
    else:
        opt = torch.optim.AdamW(ps, lr=lr, betas=o["betas"], eps=o["eps"], weight_decay=o["weight_decay"])
    losses = []
    for s in range(meta["steps"]):
        r = rows[s * per:(s + 1) * per]
        ids = torch.tensor([x["input_ids"] for x in r]); lab = torch.tensor([x["labels"] for x in r])
        opt.zero_grad()
        lg = m(input_ids=ids).logits
        sl = lab[:, 1:].reshape(-1)
        loss = torch.nn.functional.cross_entropy(lg[:, :-1].reshape(-1, lg.shape[-1]), sl, ignore_index=-100, reduction="sum") / (sl != -100).sum()
        loss.backward(); torch.nn.utils.clip_grad_norm_(ps, meta["max_grad_norm"]); opt.step(); losses.append(float(loss))
    state = {}
    if kind == "bnb8":
        for n, p in m.named_parameters():
            st = opt.state[p]
            state[n] = {k: (list(v.shape), str(v.dtype)) for k, v in st.items() if torch.is_tensor(v)}
    return {n: p.detach().clone().contiguous() for n, p in m.named_parameters()}, losses, state


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
w = max(dist.values(), key=lambda d: d["update_norm_rel_bnb_vs_torch32"])
print(json.dumps({"worst_update_gap_bnb_vs_torch32": w["update_norm_rel_bnb_vs_torch32"], "worst_rerun": max(d["bnb_rerun"] for d in dist.values()),
                  "eight_bit_tensors": [n for n, d in dist.items() if d["states"] and any("uint8" in s[1] for s in d["states"].values())]}))
