#!/usr/bin/env python3
"""The CPU-side parts of tests/gpu/check.sh: run configs it trains, and the rows of its table
(one tab-separated line each: check, result, PASS/FAIL/INFO) read from the runs' outputs.

  report.py tiny-config FIXTURE_DIR full|lora f32|bf16 cpu|cuda OUT_DIR [WORLD] -> TOML on stdout
  report.py shapes-config MISTRAL_CONFIG_JSON full|lora|qlora GPU STEPS WORK_DIR -> TOML on stdout
  report.py shapes-checkpoint MODEL_DIR                                      -> model.safetensors there (needs torch)
  report.py compare LABEL OURS_METRICS REFERENCE_METRICS TOL                 -> a row ({matmul} in LABEL: the f32 matmul of OURS' run)
  report.py compare-bf16 LABEL OURS_METRICS BF16_JSON full|lora              -> a row
  report.py throughput LABEL METRICS PLAN_JSON                               -> a row
  report.py torch-anchor MODEL_CONFIG_JSON SEQ_LEN STEPS                     -> two rows, eager and SDPA (needs torch + a GPU)
  report.py table ROWS_TSV                                                   -> the table
"""
import json
import os
import random
import statistics
import sys

LAYERS = 4  # of Mistral-7B's 32, for the throughput rows


def metrics(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def tiny_config(fixture, mode, dtype, device, out_dir, world="1"):
    """The reference's steps; WORLD ranks share each step's examples (micro-batches of
    examples_per_step / WORLD), so that every world size trains the same batches."""
    ref = json.load(open(os.path.join(fixture, "reference.json")))
    per_rank, rest = divmod(ref["examples_per_step"], int(world))
    assert rest == 0, f"{ref['examples_per_step']} examples per step do not split over {world} ranks"
    opt, section = ref["optimizer"], ref[mode]
    lora = ""
    if mode == "lora":
        init = os.path.join(fixture, section["init"])
        lora = f"[lora]\nr = {section['r']}\nalpha = {section['alpha']}\ntargets = {json.dumps(section['targets'])}\ninit = {json.dumps(init)}\n"
    return (
        f"[model]\npath = {json.dumps(fixture)}\ndtype = \"{dtype}\"\n"
        f"[data]\npath = {json.dumps(os.path.join(fixture, 'data.jsonl'))}\nseq_len = {ref['seq_len']}\nshuffle = false\n"
        f"[train]\nmode = \"{mode}\"\nsteps = {ref['steps']}\nmicro_batch_size = {per_rank}\ngrad_accum = 1\n"
        f"lr = {section['lr']}\nweight_decay = {opt['weight_decay']}\nbetas = {json.dumps(opt['betas'])}\neps = {opt['eps']}\n"
        f"max_grad_norm = {ref['max_grad_norm']}\n{lora}"
        f"[output]\ndir = {json.dumps(out_dir)}\nexport = \"none\"\n[runtime]\ndevice = \"{device}\"\n"
    )


def shapes_config(mistral_config, mode, gpu, steps, work):
    """Mistral-7B's shapes with LAYERS layers, random init (QLoRA: the random checkpoint that
    shapes-checkpoint writes in WORK_DIR/7b4-model), seq 4096, bf16, on one GPU."""
    seq = 4096
    model_dir = os.path.join(work, "7b4-model")
    os.makedirs(model_dir, exist_ok=True)
    config = json.load(open(mistral_config))
    config["num_hidden_layers"] = LAYERS
    json.dump(config, open(os.path.join(model_dir, "config.json"), "w"), indent=1)
    data = os.path.join(work, "7b4-data.jsonl")
    rng = random.Random(0)
    with open(data, "w") as f:
        for _ in range(int(steps)):
            ids = [1] + [rng.randrange(3, config["vocab_size"]) for _ in range(seq - 1)]
            f.write(json.dumps({"input_ids": ids, "labels": ids}) + "\n")
    lora = "[lora]\nr = 16\nalpha = 32\ntargets = [\"q_proj\", \"k_proj\", \"v_proj\", \"o_proj\"]\n" if mode != "full" else ""
    if mode == "qlora":
        model = f"[model]\npath = {json.dumps(model_dir)}\ndtype = \"bf16\"\n"
    else:
        model = f"[model]\ninit = \"random\"\nconfig = {json.dumps(os.path.join(model_dir, 'config.json'))}\ndtype = \"bf16\"\n"
    return (
        model +
        f"[data]\npath = {json.dumps(data)}\nformat = \"tokenized\"\nseq_len = {seq}\nshuffle = false\n"
        f"[train]\nmode = \"{mode}\"\nsteps = {steps}\nmicro_batch_size = 1\nlr = 1e-5\n{lora}"
        # No save: a full save of these optimizer states is 18 GB, minutes the check does not have.
        f"[output]\ndir = {json.dumps(os.path.join(work, '7b4-' + mode))}\nexport = \"none\"\nsave_at_end = false\n"
        f"[runtime]\ndevice = \"cuda\"\ngpu = \"{gpu}\"\n"
    )


def row(label, result, ok):
    status = "INFO" if ok is None else ("PASS" if ok else "FAIL")
    return f"{label}\t{result}\t{status}"


def compare(label, ours_path, ref_path, tol):
    """{matmul} in LABEL: what our run's f32 matmuls computed in, as its summary.json says (IEEE or TF32)."""
    summary = json.load(open(os.path.join(os.path.dirname(ours_path), "summary.json")))
    label = label.format(matmul=summary.get("f32_matmul", "unrecorded"))
    ours, ref = metrics(ours_path), metrics(ref_path)
    if len(ours) != len(ref):
        return row(label, f"{len(ours)} steps vs {len(ref)}", False)
    loss = max(abs(a["loss"] - b["loss"]) for a, b in zip(ours, ref))
    norm = max(abs(a["grad_norm"] - b["grad_norm"]) for a, b in zip(ours, ref))
    return row(label, f"max |loss diff| {loss:.2e}, |grad norm diff| {norm:.2e} (tol {float(tol):.0e})", max(loss, norm) <= float(tol))


def compare_bf16(label, ours_path, bf16_json, mode):
    """Within 3x the spread of the bf16 reference under other micro-batchings (as tests/mixed_precision.rs)."""
    ref = json.load(open(bf16_json))[mode]
    spread = max(v["loss_err"] for v in ref["rebatched"].values())
    ours = metrics(ours_path)
    if len(ours) != len(ref["losses"]):
        return row(label, f"{len(ours)} steps vs {len(ref['losses'])}", False)
    err = max(abs(m["loss"] - l) for m, l in zip(ours, ref["losses"]))
    return row(label, f"max |loss diff| {err:.2e} (tol 3 x spread {spread:.2e})", err <= 3 * spread)


def size(n):
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def throughput(label, metrics_path, plan_path):
    """Speed, MFU and exposed communication over the steps after the first (which compiles the
    kernels), and memory next to the plan's: the engine's ledger, and on a GPU cubecl's pool and
    the device as a whole (summary.json's device_memory, rank 0)."""
    steps = metrics(metrics_path)
    timed = steps[1:] or steps
    tokens_per_s = statistics.median(m["tokens_per_s"] for m in timed)
    exposed = statistics.median(m["exposed_comm_s"] / m["seconds"] for m in timed)
    plan = json.load(open(plan_path))
    strategy, assumptions = plan["strategies"][0], plan["assumptions"]
    peak_flops = assumptions["hardware"]["peak_bf16_flops" if assumptions["precision"] == "bf16" else "peak_f32_flops"]
    mfu = tokens_per_s * strategy["flops_per_token"] / peak_flops
    memory = f"engine peak {size(max(m['peak_engine_bytes'] for m in steps))}"
    summary = json.load(open(os.path.join(os.path.dirname(metrics_path), "summary.json")))
    device = (summary.get("device_memory") or [None])[0]
    if device:
        memory += f", cubecl pool reserved {size(device['pool_reserved_bytes'])}, device used {size(device['device_used_bytes'])}"
    return row(label, f"{tokens_per_s:,.0f} tok/s (plan {strategy['tokens_per_s']:,.0f}), MFU {mfu:.1%}, exposed comm {exposed:.0%}; "
               f"{memory}; plan {size(strategy['per_rank_bytes']['total'])}", None)


def shapes_checkpoint(model_dir):
    """A random bf16 checkpoint of the config in MODEL_DIR (made on the GPU where there is one:
    a billion values drawn on one CPU core would take most of the row's budget)."""
    import torch
    from transformers import MistralConfig, MistralForCausalLM

    config = MistralConfig(**{k: v for k, v in json.load(open(os.path.join(model_dir, "config.json"))).items() if k != "architectures"})
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = MistralForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(model_dir)
    return f"wrote {model_dir}"


def torch_anchor(model_config, seq, steps):
    """The same shapes in transformers on the same GPU: bf16 weights, AdamW, gradient
    checkpointing; with eager attention (as ours) and with SDPA (transformers' default)."""
    return "\n".join(torch_anchor_row(model_config, int(seq), int(steps), attention) for attention in ("eager", "sdpa"))


def torch_anchor_row(model_config, seq, steps, attention):
    import time
    import torch
    from transformers import MistralConfig, MistralForCausalLM

    config = MistralConfig(**{k: v for k, v in json.load(open(model_config)).items() if k != "architectures"})
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = MistralForCausalLM._from_config(config, attn_implementation=attention).to(device, torch.bfloat16)
    model.gradient_checkpointing_enable()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    ids = torch.randint(3, config.vocab_size, (1, seq), device=device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(steps):
        sync()
        start = time.perf_counter()
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()
        sync()
        times.append(time.perf_counter() - start)
    timed = times[1:] or times
    peak = f", peak {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB" if device == "cuda" else ""
    label = f"PyTorch anchor, 7B shapes 4 layers full bf16, {attention} attention"
    del model, opt
    if device == "cuda":
        torch.cuda.empty_cache()
    return row(label, f"{seq / statistics.median(timed):,.0f} tok/s on {device}{peak}", None)


def table(rows_path):
    rows = [line.rstrip("\n").split("\t") for line in open(rows_path) if line.strip()]
    widths = [max(len(r[i]) for r in rows) for i in range(3)] if rows else [0, 0, 0]
    for r in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip())


COMMANDS = {
    "tiny-config": tiny_config,
    "shapes-config": shapes_config,
    "compare": compare,
    "compare-bf16": compare_bf16,
    "throughput": throughput,
    "torch-anchor": torch_anchor,
    "shapes-checkpoint": shapes_checkpoint,
}

if __name__ == "__main__":
    command, args = sys.argv[1], sys.argv[2:]
    if command == "table":
        table(*args)
    else:
        print(COMMANDS[command](*args), end="" if command.endswith("config") else "\n")
