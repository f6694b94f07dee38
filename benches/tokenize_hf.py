#!/usr/bin/env python3
"""The Python `tokenizers` library's encode_batch on the `text` of every line of a JSONL file.

Usage: python3 benches/tokenize_hf.py FILE.jsonl TOKENIZER.json
Prints one JSON object: the library version, threads, tokens (no special tokens added), and the
seconds spent reading + parsing the file and in encode_batch. Run by `cargo bench -p shard-data
--bench tokenize`, which compares it with the Rust cache build on the same file.
"""
import json
import os
import sys
import time

import tokenizers
from tokenizers import Tokenizer


def main(path, tokenizer_path):
    tokenizer = Tokenizer.from_file(tokenizer_path)
    start = time.perf_counter()
    with open(path, encoding="utf-8") as f:
        texts = [json.loads(line)["text"] for line in f if line.strip()]
    parsed = time.perf_counter()
    encodings = tokenizer.encode_batch(texts, add_special_tokens=False)
    encoded = time.perf_counter()
    print(json.dumps({
        "version": tokenizers.__version__,
        "threads": int(os.environ.get("RAYON_NUM_THREADS", os.cpu_count())),
        "examples": len(texts),
        "tokens": sum(len(e.ids) for e in encodings),
        "read_seconds": parsed - start,
        "encode_seconds": encoded - parsed,
    }))


if __name__ == "__main__":
    main(*sys.argv[1:3])
