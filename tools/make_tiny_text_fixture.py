#!/usr/bin/env python3
"""A tiny text dataset with its own small tokenizer, for the tiny Mistral fixture (vocab 1000),
so that its demos read as words: `data preview` decodes the rows, an export carries the tokenizer,
and `shard-train generate` prints text.

Usage: python tools/make_tiny_text_fixture.py          (from the repository root)
Needs: pip install tokenizers

Writes tests/fixtures/tiny-text/:
  - data.jsonl: 12 {"prompt", "completion"} lines of short facts (each under 24 tokens with its
    BOS and EOS);
  - tokenizer.json: a byte-level BPE of 512 tokens trained on those lines and a short word list,
    ids 0, 1, 2 = <unk>, <s>, </s> (the tiny model's bos_token_id 1 and eos_token_id 2), BOS put
    in front of a sequence, a space in front of each piece (so a completion starts a new word).
"""
import json

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

OUT = "tests/fixtures/tiny-text"

FACTS = [
    ("The capital of France is", "Paris."),
    ("The capital of Italy is", "Rome."),
    ("The capital of Spain is", "Madrid."),
    ("The sky on a clear day is", "blue."),
    ("Grass in the spring is", "green."),
    ("Two plus two is", "four."),
    ("Three plus four is", "seven."),
    ("A cat says", "meow."),
    ("A dog says", "woof."),
    ("Water freezes at zero degrees and boils at", "one hundred degrees."),
    ("The sun rises in the", "east."),
    ("The sun sets in the", "west."),
]

WORDS = """the a an and or of in on at to from with for by is are was were be been it this that
these those there here what who where when why how one two three four five six seven eight nine
ten hundred thousand red blue green yellow black white sky sea sun moon star rain snow wind
river mountain city country capital house tree flower grass water fire earth day night morning
evening spring summer autumn winter cat dog bird fish horse cow says eats runs sleeps plays
sings good bad big small old new hot cold warm cool fast slow happy sad yes no please thank you
hello goodbye name time year week month today tomorrow yesterday north south east west left
right up down book word story song game friend family child man woman people world""".split()


def main():
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512,
        special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    corpus = [f"{p} {c}" for p, c in FACTS] * 4 + [" ".join(WORDS)]
    tokenizer.train_from_iterator(corpus, trainer)
    assert [tokenizer.token_to_id(t) for t in ["<unk>", "<s>", "</s>"]] == [0, 1, 2]
    tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tokenizer.save(f"{OUT}/tokenizer.json")

    with open(f"{OUT}/data.jsonl", "w") as f:
        for prompt, completion in FACTS:
            n = 1 + len(tokenizer.encode(prompt, add_special_tokens=False).ids) + len(tokenizer.encode(completion, add_special_tokens=False).ids) + 1
            assert n <= 24, (prompt, n)
            f.write(json.dumps({"prompt": prompt, "completion": completion}) + "\n")
    print(f"{tokenizer.get_vocab_size()} tokens")


if __name__ == "__main__":
    main()
