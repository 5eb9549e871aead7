"""What tests/test_train.py and tests/test_distributed.py share: a tiny SWA-MLA model, a seeded corpus, the log."""

import json
import os
import random

from fastllm.tokenizer import train_bpe

# swa-mla-262m shrunk: two sliding-window layers and an MLA layer
TINY = dict(
    n_layer=3,
    d_model=32,
    n_head=2,
    d_ff=48,
    layer_pattern=["sliding", "sliding", "mla"],
    window=8,
    sink_tokens=2,
    kv_lora_rank=8,
    qk_nope_head_dim=8,
    qk_rope_head_dim=4,
    v_head_dim=8,
    mla_rope_by_head=False,
)


def make_corpus(root, lines: int, zipf: bool) -> tuple[list[str], str]:
    """Two text files of `lines` seeded pseudo-sentences each (words drawn uniformly or Zipf-like) and a 320-token
    BPE trained on them: (file paths, tokenizer.json path)."""
    rng = random.Random(0)
    words = ["".join(rng.choice("aeioubcdfghklmnprstvw") for _ in range(rng.randint(2, 8))) for _ in range(300)]
    weights = [1 / (r + 1) for r in range(len(words))] if zipf else None
    files = []
    for i in range(2):
        text = [" ".join(rng.choices(words, weights, k=rng.randint(4, 14))).capitalize() + "." for _ in range(lines)]
        path = root / f"part{i}.txt"
        path.write_text("\n".join(text) + "\n", encoding="utf-8")
        files.append(str(path))
    tok = train_bpe(files, 320, special_tokens=["<|endoftext|>"])
    tok.save(str(root / "tokenizer.json"))
    return files, str(root / "tokenizer.json")


def read_log(out_dir, key="loss") -> list[tuple]:
    """(step, value) of every row of out_dir/log.jsonl that has `key`."""
    with open(os.path.join(out_dir, "log.jsonl"), encoding="utf-8") as f:
        return [(r["step"], r[key]) for r in map(json.loads, f) if key in r]
