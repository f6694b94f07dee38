#!/usr/bin/env python3
"""Pre-tokenized examples whose lengths are drawn like an instruction dataset's: log-normal with a
median of about 200 tokens and a long tail, cut to [8, MAX_LEN]; the first third of each example (the
prompt) carries no loss. Token ids are random in [3, VOCAB). Prints the length quantiles to stderr.

  python3 benches/instruction_lengths.py EXAMPLES MAX_LEN VOCAB > data.jsonl
"""
import json, math, random, sys

examples, max_len, vocab = (int(a) for a in sys.argv[1:4])
rng = random.Random(0)
lengths = [min(max_len, max(8, round(rng.lognormvariate(math.log(200), 0.9)))) for _ in range(examples)]
for n in lengths:
    ids = [1] + [rng.randrange(3, vocab) for _ in range(n - 1)]
    prompt = n // 3
    print(json.dumps({"input_ids": ids, "labels": [-100] * prompt + ids[prompt:]}))
q = sorted(lengths)
print(f"lengths: median {q[len(q) // 2]}, p90 {q[len(q) * 9 // 10]}, max {q[-1]}, mean {sum(q) / len(q):.0f}", file=sys.stderr)
