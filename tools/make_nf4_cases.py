#!/usr/bin/env python3
"""NF4 references from bitsandbytes on the CPU, for shapes that tools/make_nf4_fixture.py
(one [96, 256] weight) does not cover:  make_nf4_cases.py OUT_DIR

For each case NAME, with W [out, in] as f32 (`f32`) and as its bf16 rounding (`bf16`):
  NAME.weight                       the f32 input (the bf16 input is its rounding)
  NAME.DT.packed                    quantize_4bit(nf4, blocksize 64, double quant): packed codes
  NAME.DT.absmax_single             the f32 absmax per block (before double quantization)
  NAME.DT.absmax_q, .nested_absmax, .offset   the double-quantized absmax (blocks of 256)
  NAME.DT.dq                        dequantize_4bit as bitsandbytes runs it here (f32)
  NAME.DT.dq_flat                   the same codes dequantized with flat blocks of 64 (what
                                    bitsandbytes' generic torch path and its CUDA kernel compute)
Cases: widths that are not multiples of 64 (160: a multiple of 16, which bitsandbytes' AVX-512
dequantize kernel indexes by row; 100: even; 45: odd, with an odd element count), an all-zero
block, an outlier, and values exactly on the midpoints between NF4 levels (ties).
Also `sum.input` (70,000 absmax-like values) with `sum.mean.tT`, torch's mean of it with T threads,
`sum.centred.codes` / `.absmax`: quantize_blockwise(input - mean, blocksize=256) (the 8-bit step),
and `dynamic_map` (create_dynamic_map(), the 8-bit code of the nested absmax). nf4_cases.json
records the versions and the CPU capability."""
import json, os, sys
import torch
import bitsandbytes as bnb
import bitsandbytes.functional as F
from safetensors.torch import save_file

out = sys.argv[1]
os.makedirs(out, exist_ok=True)
g = torch.Generator().manual_seed(12)
code = F.get_4bit_type("nf4", device="cpu")


def weight(rows, cols):
    return torch.randn(rows, cols, generator=g) * 0.04


w160 = weight(64, 160)
w160[5, :64] = 0.0  # an all-zero block
w160[9, 17] = 1.3  # an outlier
ties = weight(8, 64)
mid = ((code[:-1] + code[1:]) / 2)  # exactly between two levels, once the block's absmax is 1
ties[:, :15] = mid
ties[:, 15] = 1.0
ties[:, 16:31] = -mid
cases = {"w160": w160, "w100": weight(33, 100), "w45": weight(7, 45), "ties": ties}


def flat_dequant(packed, absmax, numel, dtype):
    b = packed.flatten()
    idx = torch.stack([b >> 4, b & 15], 1).flatten()[:numel].long()
    blocks = torch.arange(numel) // 64
    return (code[idx] * absmax[blocks]).to(dtype).float()


t = {"dynamic_map": F.create_dynamic_map()}
for name, w in cases.items():
    t[f"{name}.weight"] = w
    for dt, x in (("f32", w), ("bf16", w.to(torch.bfloat16))):
        q1, s1 = F.quantize_4bit(x, blocksize=64, quant_type="nf4", compress_statistics=False)
        q2, s2 = F.quantize_4bit(x, blocksize=64, quant_type="nf4", compress_statistics=True)
        assert torch.equal(q1, q2)
        p = f"{name}.{dt}"
        t[f"{p}.packed"] = q2.flatten()
        t[f"{p}.absmax_single"] = s1.absmax
        t[f"{p}.absmax_q"] = s2.absmax
        t[f"{p}.nested_absmax"] = s2.state2.absmax
        t[f"{p}.offset"] = torch.tensor([float(s2.offset)])
        t[f"{p}.dq"] = F.dequantize_4bit(q2, s2).float()
        absmax = F.dequantize_blockwise(s2.absmax, s2.state2) + s2.offset
        t[f"{p}.dq_flat"] = flat_dequant(q2, absmax, w.numel(), x.dtype).reshape(w.shape)

# More than torch's grain (32,768 elements): its sum splits the work between threads.
t["sum.input"] = torch.rand(70_000, generator=g) * 0.1 + 0.01
threads = torch.get_num_threads()
for n in (1, 2, 3):
    torch.set_num_threads(n)
    t[f"sum.mean.t{n}"] = t["sum.input"].mean().reshape(1)
torch.set_num_threads(threads)
q8, s8 = F.quantize_blockwise(t["sum.input"] - t["sum.mean.t1"], blocksize=256)  # the double quantization's step
t["sum.centred.codes"], t["sum.centred.absmax"] = q8, s8.absmax

save_file({k: v.contiguous() for k, v in t.items()}, f"{out}/nf4_cases.safetensors")
json.dump({"bitsandbytes": bnb.__version__, "torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
           "cases": {k: list(v.shape) for k, v in cases.items()}}, open(f"{out}/nf4_cases.json", "w"), indent=2)
print("written", len(t), "tensors to", out)
