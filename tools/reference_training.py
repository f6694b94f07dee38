"""What the reference scripts share (imported by make_*_reference.py and make_exact64.py, which run
from any directory: Python puts tools/ on the path of a script run from it).

A fixture's hyper-parameters and data as tools/make_fixtures.py writes them (reference.json,
data.jsonl), peft LoRA started from its adapter init, the training step every reference takes (the
step's examples in micro-batches of `split`, each micro-batch's cross-entropy summed and divided by
the step's target tokens, clip_grad_norm_, torch.optim.AdamW), FSDP2-style bf16 mixed precision
(MixedPrecisionPolicy(param_dtype=bfloat16, reduce_dtype=float32)), and the per-tensor distances
the fixtures record."""
import json

import numpy as np
import torch
from peft import LoraConfig, get_peft_model, set_peft_model_state_dict
from safetensors.torch import load_file


class Fixture:
    def __init__(self, path):
        self.path = path
        self.meta = json.load(open(f"{path}/reference.json"))
        self.rows = [json.loads(line) for line in open(f"{path}/data.jsonl")]
        self.per_step = self.meta["examples_per_step"]

    def with_lora(self, model):
        """`model` under peft LoRA as reference.json's `lora` says, from lora/adapter_init.safetensors."""
        lc = self.meta["lora"]
        model = get_peft_model(model, LoraConfig(r=lc["r"], lora_alpha=lc["alpha"], target_modules=lc["targets"], lora_dropout=0.0, bias="none", task_type="CAUSAL_LM"))
        set_peft_model_state_dict(model, load_file(f"{self.path}/lora/adapter_init.safetensors"))
        return model

    def adamw(self, params, lr):
        o = self.meta["optimizer"]
        return torch.optim.AdamW(params, lr=lr, betas=o["betas"], eps=o["eps"], weight_decay=o["weight_decay"])

    def steps(self, split):
        """Per step: its micro-batches of `split` examples as (input_ids, labels) and the step's target tokens."""
        for s in range(self.meta["steps"]):
            rows = self.rows[s * self.per_step:(s + 1) * self.per_step]
            targets = sum(sum(1 for label in r["labels"][1:] if label != -100) for r in rows)
            parts = [rows[i:i + split] for i in range(0, self.per_step, split)]
            yield [(torch.tensor([r["input_ids"] for r in p]), torch.tensor([r["labels"] for r in p])) for p in parts], targets

    def other_splits(self):
        """The micro-batch sizes other than the whole step that divide it: how a step is re-batched."""
        return sorted({d for d in range(1, self.per_step) if self.per_step % d == 0})


def loss_sum(logits, labels):
    """The summed next-token cross-entropy of f32 `logits` [batch, seq, vocab] on `labels`."""
    return torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=-100, reduction="sum")


def train(fixture, model, params, lr, split):
    """Trains `params` of `model` (one dtype throughout); returns the per-step losses and grad norms before clipping."""
    opt = fixture.adamw(params, lr)
    losses, norms = [], []
    for micro_batches, targets in fixture.steps(split):
        opt.zero_grad()
        total = 0.0
        for ids, labels in micro_batches:
            step_loss = loss_sum(model(input_ids=ids).logits.float(), labels)
            (step_loss / targets).backward()
            total += step_loss.item()
        norms.append(torch.nn.utils.clip_grad_norm_(params, fixture.meta["max_grad_norm"]).item())
        opt.step()
        losses.append(total / targets)
    return losses, norms


def bf16_compute_copy(master):
    """A bf16 copy of the f32 `master` to compute with. `.to(bfloat16)` also rounds RoPE's inv_freq
    buffers to bf16 (moving positions by up to 0.4% of their angle); FSDP2 casts parameters only, and
    from_pretrained(torch_dtype=bfloat16) keeps them f32 too: the copy takes the master's."""
    import copy
    compute = copy.deepcopy(master).to(torch.bfloat16)
    f32_modules = dict(master.named_modules())
    for name, module in compute.named_modules():
        for attr in ("inv_freq", "original_inv_freq"):
            if isinstance(getattr(module, attr, None), torch.Tensor):
                setattr(module, attr, getattr(f32_modules[name], attr).clone())
    return compute


def train_mixed(fixture, master, names, lr, split):
    """bf16 mixed precision: f32 master parameters `names` of `master` updated by AdamW, a bf16 copy
    made from them before every forward, forward and backward in bf16 (the loss on f32 logits), bf16
    gradients summed over micro-batches in f32, clipping in f32. Returns losses and grad norms."""
    compute = bf16_compute_copy(master)
    mp, cp = dict(master.named_parameters()), dict(compute.named_parameters())
    params = [mp[n] for n in names]
    opt = fixture.adamw(params, lr)
    losses, norms = [], []
    for micro_batches, targets in fixture.steps(split):
        with torch.no_grad():  # the bf16 copy of the f32 master, as FSDP2 casts before its all-gather
            for n in names:
                cp[n].copy_(mp[n].to(torch.bfloat16))
        grads = {n: torch.zeros_like(mp[n]) for n in names}
        total = 0.0
        for ids, labels in micro_batches:
            compute.zero_grad()
            step_loss = loss_sum(compute(input_ids=ids).logits.float(), labels)
            (step_loss / targets).backward()
            total += step_loss.item()
            for n in names:  # bf16 gradient, reduced and accumulated in f32
                grads[n] += cp[n].grad.float()
        for n in names:
            mp[n].grad = grads[n]
        norms.append(torch.nn.utils.clip_grad_norm_(params, fixture.meta["max_grad_norm"]).item())
        opt.step()
        opt.zero_grad()
        losses.append(total / targets)
    return losses, norms


def distance(a, b):
    """The worst per-tensor distance of `a` from `b` over `b`'s tensors: norm-relative and max-relative."""
    worst, worst_max = 0.0, 0.0
    for k in b:
        bb = b[k].double().numpy()
        d = a[k].double().numpy() - bb
        worst = max(worst, float(np.linalg.norm(d) / np.linalg.norm(bb)))
        worst_max = max(worst_max, float(np.abs(d).max() / np.abs(bb).max()))
    return {"norm_rel": worst, "max_rel": worst_max}


def rebatched(fixture, train_at, final, losses):
    """How far torch moves when a step is split into other micro-batches: `train_at(split)` returns
    (tensors, losses); per split, the distance from `final` and the worst loss difference from `losses`."""
    spread = {}
    for split in fixture.other_splits():
        other, other_losses = train_at(split)
        spread[str(split)] = {**distance(other, final), "loss_err": max(abs(a - b) for a, b in zip(other_losses, losses))}
    return spread
