#!/usr/bin/env python3
"""Random pre-tokenized examples for benchmarks: ROWS lines of SEQ token ids in [3, VOCAB), every
token a target (like benches/torch_fsdp_cpu.py, which trains on random ids with labels = ids).

  python3 benches/random_tokens.py ROWS SEQ VOCAB > data.jsonl
"""
import json, random, sys

rows, seq, vocab = (int(a) for a in sys.argv[1:4])
rng = random.Random(0)
for _ in range(rows):
    print(json.dumps({"input_ids": [rng.randrange(3, vocab) for _ in range(seq)]}))
