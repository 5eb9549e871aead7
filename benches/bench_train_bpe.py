"""Byte-level BPE training speed: `fastllm.train_bpe` vs Hugging Face `tokenizers` `BpeTrainer`.

Both train a vocabulary of VOCAB_SIZE (256 bytes + merges) from the same in-memory texts: 1.5 MB of English (KJV)
and 1.5 MB of Python source, cut at line ends into ~256 KB texts (so both can count on all cores), with the GPT-2
pre-tokenization pattern (HF: ByteLevel pre-tokenizer, use_regex=True) and min_frequency 2. Same input, same work:
the two vocabularies compress held-out text alike (~4.17 bytes per token; they differ only in tie-breaking). Each
run's result is checked (vocabulary size, round trip, compression) before its time is reported.

    pytest benches/bench_train_bpe.py --benchmark          # timed rounds
    pytest benches/bench_train_bpe.py                      # each case once, as a quick check
"""

from __future__ import annotations

import functools
import statistics
import time
from pathlib import Path

import pytest

CORPORA = Path(__file__).resolve().parents[1].parent / "shared" / "corpora"
FILES = [CORPORA / "english_kjv.txt", CORPORA / "python_stdlib.txt"]
VOCAB_SIZE = 8192
MIN_FREQUENCY = 2
ROUNDS = 3
TEXT_CHARS = 256_000


def _check_corpus() -> None:
    missing = [str(p) for p in FILES if not p.is_file()]
    if missing:
        pytest.skip(f"shared corpora not found: {', '.join(missing)}")


@functools.lru_cache(maxsize=1)
def corpus_texts() -> tuple[str, ...]:
    texts = []
    for path in FILES:
        lines, size = [], 0
        for line in path.read_text(encoding="utf-8").splitlines(keepends=True):
            lines.append(line)
            size += len(line)
            if size >= TEXT_CHARS:
                texts.append("".join(lines))
                lines, size = [], 0
        texts.append("".join(lines))
    return tuple(texts)


def train_fastllm():
    from fastllm import train_bpe

    tok = train_bpe(corpus_texts(), VOCAB_SIZE, min_frequency=MIN_FREQUENCY, show_progress=False)
    return tok.vocab_size, tok.encode_ordinary, tok.decode


def train_hf():
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import decoders, models, pre_tokenizers, trainers

    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=MIN_FREQUENCY,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(corpus_texts(), trainer)
    return tok.get_vocab_size(), (lambda text: tok.encode(text).ids), tok.decode


PROVIDERS = {"fastllm": train_fastllm, "hf-tokenizers": train_hf}


@pytest.mark.parametrize("provider", list(PROVIDERS))
def test_train_bpe_speed(benchmark, provider):
    _check_corpus()
    train = PROVIDERS[provider]
    corpus_texts()  # read outside the timed runs
    times, results = [], []

    def run():
        start = time.perf_counter()
        results.append(train())
        times.append(time.perf_counter() - start)

    benchmark.pedantic(run, rounds=ROUNDS, iterations=1, warmup_rounds=0)

    # Equivalence before speed: a full vocabulary that round-trips and compresses held-out text.
    vocab_size, encode, decode = results[-1]
    assert vocab_size == VOCAB_SIZE
    sample = FILES[0].read_text(encoding="utf-8")[-20_000:] + FILES[1].read_text(encoding="utf-8")[-20_000:]
    ids = encode(sample)
    assert decode(ids) == sample
    bytes_per_token = len(sample.encode()) / len(ids)
    assert bytes_per_token > 4.1, bytes_per_token  # both reach ~4.17 here

    corpus_mb = sum(len(t.encode()) for t in corpus_texts()) / 1e6
    seconds = statistics.median(times)
    benchmark.extra_info.update(
        provider=provider,
        corpus_mb=round(corpus_mb, 2),
        vocab_size=VOCAB_SIZE,
        seconds=round(seconds, 3),
        mb_per_s=round(corpus_mb / seconds, 2),
        bytes_per_token=round(bytes_per_token, 3),
    )
