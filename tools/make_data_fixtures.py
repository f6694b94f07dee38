#!/usr/bin/env python3
"""Reference rows for the data pipeline, made independently of the Rust code.

Usage: python tools/make_data_fixtures.py [--packed-only]        (from the repository root)
Needs: pip install tokenizers mistral-common sentencepiece transformers jinja2

For each tests/fixtures/data/<format>.jsonl it writes, under tests/fixtures/data/expected/,
<format>.rows.jsonl (one example per row) and <format>.packed.jsonl (packing), each line
{"input_ids": [...], "labels": [...]}, with seq_len 48 and the Mistral-7B-v0.1 tokenizer:
  - text and prompt_completion: the HF `tokenizers` library, each piece encoded on its own
    (add_special_tokens=False), BOS as the tokenizer's post-processor adds it, EOS = 2;
  - chat: mistral-common's own v1 tokenizer (SentencePiece), per piece, and checked against its
    encode_chat_completion for the whole conversation;
  - tokenized: the ids as they are;
  - alpaca: as prompt_completion, the prompt being Stanford Alpaca's (train.py's PROMPT_DICT:
    prompt_input when `input` is non-empty, prompt_no_input otherwise), the output its completion;
  - messages: ShareGPT's spelling (conversations, from/value, human/gpt) read as OpenAI's, then
    as chat (messages.*), and rendered with tests/fixtures/data/chat_template.jinja by transformers'
    apply_chat_template (messages-template.*): the rendering tokenized whole (no special tokens
    added), loss on each token that starts inside the text an assistant turn adds, from the end of
    the conversation before it rendered with add_generation_prompt=True to the end of the
    conversation through it.
Rules (see crates/data): BOS carries no loss; an example is cut to seq_len; with packing, an
example that does not end with EOS gets one first (with loss if its last token carries loss), and
the examples are packed whole into rows of at most seq_len tokens by first-fit decreasing, each
example's first token without loss; packed rows also list where their examples start ("starts").
"""
import json
import os
import sys

from tokenizers import Tokenizer

SEQ_LEN = 48
EOS = 2
DATA = "tests/fixtures/data"
HF = Tokenizer.from_file("tests/fixtures/tokenizer/mistral-7b-v0.1.tokenizer.json")


def hf_bos():
    with_special, without = HF.encode("a").ids, HF.encode("a", add_special_tokens=False).ids
    assert with_special[1:] == without
    return with_special[0]


BOS = hf_bos()


def hf(text):
    return HF.encode(text, add_special_tokens=False).ids


def mistral_common():
    import mistral_common
    from mistral_common.protocol.instruct.validator import ValidationMode
    from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

    path = os.path.join(os.path.dirname(mistral_common.__file__), "data", "tokenizer.model.v1")
    return MistralTokenizer.from_file(path, mode=ValidationMode.finetuning)


def pieces_text(row):
    return [([BOS], False), (hf(row["text"]), True), ([EOS], True)]


def pieces_prompt_completion(row):
    return [([BOS], False), (hf(row["prompt"]), False), (hf(row["completion"]), True), ([EOS], True)]


def pieces_chat(row, mc):
    from mistral_common.protocol.instruct.messages import AssistantMessage, SystemMessage, UserMessage
    from mistral_common.protocol.instruct.request import ChatCompletionRequest

    sp = mc.instruct_tokenizer.tokenizer
    messages = row["messages"]
    system = messages[0]["content"] if messages[0]["role"] == "system" else None
    turns = messages[1:] if system is not None else messages
    pieces = [([sp.bos_id], False)]
    for i, m in enumerate(turns):
        if m["role"] == "user":
            content = f"{system}\n\n{m['content']}" if (i == 0 and system) else m["content"]
            pieces.append((sp.encode(f"[INST] {content} [/INST]", bos=False, eos=False), False))
        else:
            pieces.append((sp.encode(m["content"], bos=False, eos=False) + [sp.eos_id], True))
    kinds = {"system": SystemMessage, "user": UserMessage, "assistant": AssistantMessage}
    request = ChatCompletionRequest(messages=[kinds[m["role"]](content=m["content"]) for m in messages])
    whole = mc.encode_chat_completion(request).tokens
    assert [t for ids, _ in pieces for t in ids] == whole, row
    return pieces


ALPACA_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:"
)
ALPACA_WITHOUT_INPUT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:"
)


def pieces_alpaca(row):
    template = ALPACA_WITH_INPUT if row.get("input") else ALPACA_WITHOUT_INPUT
    prompt = template.format(instruction=row["instruction"], input=row.get("input", ""))
    return [([BOS], False), (hf(prompt), False), (hf(row["output"]), True), ([EOS], True)]


def openai_messages(row):
    """ShareGPT's spelling as OpenAI's."""
    roles = {"human": "user", "gpt": "assistant"}
    turns = row.get("messages") or row["conversations"]
    return [{"role": roles.get(m.get("role", m.get("from")), m.get("role", m.get("from"))), "content": m.get("content", m.get("value"))} for m in turns]


def templated_tokenizer():
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(tokenizer_file="tests/fixtures/tokenizer/mistral-7b-v0.1.tokenizer.json", bos_token="<s>", eos_token="</s>")
    with open(f"{DATA}/chat_template.jinja") as f:
        tok.chat_template = f.read()
    return tok


def messages_with_template(row, tok):
    messages = openai_messages(row)
    text = tok.apply_chat_template(messages, tokenize=False)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] == "assistant":
            before = tok.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True)
            through = tok.apply_chat_template(messages[: i + 1], tokenize=False)
            assert text.startswith(before) and text.startswith(through), row
            spans.append((len(before), len(through)))
    encoded = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = encoded["input_ids"]
    labels = [t if any(a <= start < b for a, b in spans) else -100 for t, (start, _) in zip(ids, encoded["offset_mapping"])]
    return ids, labels


def example(pieces):
    ids = [t for piece, _ in pieces for t in piece]
    labels = [t if loss else -100 for piece, loss in pieces for t in piece]
    return ids, labels


def tokenized(row):
    ids = row["input_ids"]
    labels = row.get("labels") or list(ids)
    return ids, labels


def unpacked(examples):
    return [(ids[:SEQ_LEN], labels[:SEQ_LEN]) for ids, labels in examples]


def packed(unpacked_rows):
    """Packed rows from the unpacked ones: an example shorter than seq_len was not cut, and one
    cut to seq_len stays the same cut after its EOS is added."""
    closed = []
    for ids, labels in unpacked_rows:
        if ids[-1] != EOS:
            ids, labels = ids + [EOS], labels + [EOS if labels[-1] != -100 else -100]
        closed.append((ids[:SEQ_LEN], labels[:SEQ_LEN]))
    return [packed_row([closed[i] for i in row]) for row in first_fit_decreasing([len(ids) for ids, _ in closed])]


def first_fit_decreasing(lengths):
    """Longest first (ties in file order), each into the first row with room; examples in file order within a row."""
    rows, used = [], []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        for r in range(len(rows) + 1):
            if r == len(rows):
                rows.append([]), used.append(0)
            if used[r] + lengths[i] <= SEQ_LEN:
                rows[r].append(i)
                used[r] += lengths[i]
                break
    return [sorted(r) for r in rows]


def packed_row(examples):
    """The examples one after the other; each one's first token is never a target."""
    ids, labels, starts = [], [], []
    for e_ids, e_labels in examples:
        starts.append(len(ids))
        ids += e_ids
        labels += [-100] + e_labels[1:]
    return ids, labels, starts


def write(path, rows):
    with open(path, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def main():
    """With --packed-only, the packed rows are made again from the unpacked rows already there
    (no tokenizer needed)."""
    names = ["tokenized", "text", "prompt_completion", "chat", "alpaca", "messages", "messages-template"]
    if "--packed-only" in sys.argv:
        rows = {n: [(r["input_ids"], r["labels"]) for r in map(json.loads, open(f"{DATA}/expected/{n}.rows.jsonl"))] for n in names}
    else:
        mc = mistral_common()
        tok = templated_tokenizer()
        # The rows of each expected file, and the dataset they are made from.
        makers = {
            "tokenized": (tokenized, "tokenized"),
            "text": (lambda r: example(pieces_text(r)), "text"),
            "prompt_completion": (lambda r: example(pieces_prompt_completion(r)), "prompt_completion"),
            "chat": (lambda r: example(pieces_chat(r, mc)), "chat"),
            "alpaca": (lambda r: example(pieces_alpaca(r)), "alpaca"),
            "messages": (lambda r: example(pieces_chat({"messages": openai_messages(r)}, mc)), "messages"),
            "messages-template": (lambda r: messages_with_template(r, tok), "messages"),
        }
        rows = {}
        for name, (make, source) in makers.items():
            with open(f"{DATA}/{source}.jsonl") as f:
                rows[name] = unpacked([make(json.loads(line)) for line in f if line.strip()])
            write(f"{DATA}/expected/{name}.rows.jsonl", [{"input_ids": ids, "labels": labels} for ids, labels in rows[name]])
    for name in names:
        write(f"{DATA}/expected/{name}.packed.jsonl", [{"input_ids": i, "labels": l, "starts": s} for i, l, s in packed(rows[name])])


if __name__ == "__main__":
    main()
