"""Tests for `fastllm.train_bpe` (C++ trainer in csrc/train.cpp, Python entry in fastllm/_train_bpe.py).

The trained tokenizer must round-trip through Hugging Face `tokenizers` with identical ids, its merges must equal a
naive pure-Python trainer's (recount every pair on every merge, same tie-breaking), and the result must depend only
on the corpus content: not on the order of texts, the file chunking or the number of threads.
"""

from __future__ import annotations

import os
import random
from collections import Counter
from pathlib import Path

import pytest
import regex
from hypothesis import example, given, settings
from hypothesis import strategies as st

from fastllm import _bpe, _train_bpe, train_bpe
from fastllm._bpe_py import PATTERNS as ORACLE_PATTERNS

tokenizers = pytest.importorskip("tokenizers")

CORPORA = Path(__file__).resolve().parents[1].parent / "shared" / "corpora"
CORPUS_FILES = {
    "english": "english_kjv.txt",
    "code": "python_stdlib.txt",
    "de": "fortunes_de.txt",
    "ru": "fortunes_ru.txt",
    "zh": "fortunes_zh.txt",
}
TRAIN_CHARS = 100_000  # per corpus: ~0.5 MB of training text in all
HELD_OUT_CHARS = 20_000
VOCAB_SIZE = 1500
EOT = "<|endoftext|>"
MAX_EXAMPLES = int(os.environ.get("FASTLLM_HYPOTHESIS_EXAMPLES", "200"))


def _read_corpora() -> dict[str, str]:
    missing = [name for name in CORPUS_FILES.values() if not (CORPORA / name).is_file()]
    if missing:
        pytest.skip(f"shared corpora not found in {CORPORA} (missing {', '.join(missing)})")
    return {key: (CORPORA / name).read_text(encoding="utf-8") for key, name in CORPUS_FILES.items()}


@pytest.fixture(scope="module")
def corpora() -> dict[str, str]:
    return _read_corpora()


@pytest.fixture(scope="module")
def trained(corpora):
    texts = [text[:TRAIN_CHARS] for text in corpora.values()]
    return train_bpe(texts, VOCAB_SIZE, special_tokens=[EOT], show_progress=False)


@pytest.fixture(scope="module")
def hf_tokenizer(trained, tmp_path_factory):
    path = tmp_path_factory.mktemp("trained") / "tokenizer.json"
    trained.save(path)
    return tokenizers.Tokenizer.from_file(str(path))


# ==== Naive reference trainer ====


def reference_train(texts: list[str], num_merges: int, min_frequency: int) -> list[tuple[int, int]]:
    """Byte-level BPE the slow, obvious way: recount all pairs over all words before every merge.

    Ties: highest count, then the smallest merged bytes, then the smallest (left, right) (csrc/train.h).
    """
    words = Counter(piece.encode() for text in texts for piece in regex.findall(ORACLE_PATTERNS["gpt2"], text))
    seqs = {word: list(word) for word in words}
    tokens = [bytes([b]) for b in range(256)]
    merges = []
    while len(merges) < num_merges:
        pairs = Counter()
        for word, seq in seqs.items():
            for pair in zip(seq, seq[1:]):
                pairs[pair] += words[word]
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], tokens[p[0]] + tokens[p[1]], p))
        if pairs[best] < min_frequency:
            break
        new_id = len(tokens)
        tokens.append(tokens[best[0]] + tokens[best[1]])
        merges.append(best)
        for word, seq in seqs.items():
            out, i = [], 0
            while i < len(seq):
                if i + 1 < len(seq) and (seq[i], seq[i + 1]) == best:
                    out.append(new_id)
                    i += 2
                else:
                    out.append(seq[i])
                    i += 1
            seqs[word] = out
    return merges


def native_train(texts, num_merges, min_frequency, pattern="gpt2", num_threads=None):
    trainer = _bpe.BpeTrainer(pattern)
    trainer.add_texts(texts, num_threads=num_threads)
    return trainer.train(num_merges, min_frequency, None)


def test_matches_reference_trainer_hand_made():
    texts = ["low " * 5 + "lower " * 2 + "newest " * 6 + "widest " * 3, "aaabdaaabac", "aaaa aaa aa a"]
    for min_frequency in (0, 2, 3):
        assert native_train(texts, 40, min_frequency)[1] == reference_train(texts, 40, min_frequency)


def test_matches_reference_trainer_on_corpora(corpora):
    # ~1.5 KB of each language keeps the quadratic reference fast; the non-ASCII corpora exercise bytes >= 0x80.
    texts = [text[5000:6500] for text in corpora.values()]
    tokens, merges = native_train(texts, 250, 2)
    assert merges == reference_train(texts, 250, 2)
    assert len(tokens) == 256 + len(merges)
    assert tokens[:256] == [bytes([b]) for b in range(256)]
    assert all(tokens[256 + i] == tokens[a] + tokens[b] for i, (a, b) in enumerate(merges))


@settings(max_examples=max(20, MAX_EXAMPLES // 4), deadline=None)
@given(st.lists(st.text(alphabet="ab c\n'.1é", max_size=40), max_size=8), st.integers(0, 3))
def test_matches_reference_trainer_random(texts, min_frequency):
    assert native_train(texts, 30, min_frequency)[1] == reference_train(texts, 30, min_frequency)


# ==== Round trip through Hugging Face tokenizers ====


def test_vocab_layout(trained):
    assert trained.vocab_size == VOCAB_SIZE
    assert trained.special_tokens == {EOT: VOCAB_SIZE - 1}
    assert [trained.token_bytes(b) for b in range(256)] == [bytes([b]) for b in range(256)]
    learned = [trained.token_bytes(i) for i in range(256, VOCAB_SIZE - 1)]
    assert len(set(learned)) == len(learned) and all(len(t) >= 2 for t in learned)


@pytest.mark.parametrize("corpus", list(CORPUS_FILES))
def test_hf_ids_identical_on_held_out_text(corpora, trained, hf_tokenizer, corpus):
    text = corpora[corpus][-HELD_OUT_CHARS:]
    ids = trained.encode_ordinary(text)
    assert hf_tokenizer.encode(text).ids == ids
    assert trained.decode(ids) == text
    assert hf_tokenizer.decode(ids) == text
    assert len(ids) < len(text.encode()) / 1.5  # the merges compress (> 1.5 bytes per token on every corpus)


def test_hf_special_token(trained, hf_tokenizer):
    text = f"In the beginning{EOT}def main():"
    ids = trained.encode(text, allowed_special="all")
    assert VOCAB_SIZE - 1 in ids
    assert hf_tokenizer.encode(text).ids == ids


@pytest.mark.parametrize("pattern", ["cl100k", "o200k", r"\s?\w+|\s?[^\w\s]+|\s+"])
def test_hf_ids_identical_other_patterns(corpora, tmp_path, pattern):
    tok = train_bpe([t[:30_000] for t in corpora.values()], 700, pattern=pattern, show_progress=False)
    tok.save(tmp_path / "tokenizer.json")
    hf = tokenizers.Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    for text in corpora.values():
        held_out = text[-5000:]
        assert hf.encode(held_out).ids == tok.encode_ordinary(held_out)


@settings(max_examples=MAX_EXAMPLES, deadline=None)
@given(st.text(max_size=200))
@example("a<|endoftext|>b <|endoftext|>")
def test_hf_ids_identical_on_random_text(trained, hf_tokenizer, text):
    ids = trained.encode_ordinary(text)
    assert trained.decode(ids) == text
    # HF splits its added special tokens out of any text: the same as encode with every special token allowed
    assert hf_tokenizer.encode(text).ids == trained.encode(text, allowed_special="all")


# ==== Determinism ====


def test_deterministic_across_runs_and_order(corpora):
    texts = [text[:30_000] for text in corpora.values()]
    first = native_train(texts, 600, 2)
    assert native_train(texts, 600, 2) == first
    shuffled = texts[:]
    random.Random(0).shuffle(shuffled)
    assert native_train(list(reversed(texts)), 600, 2) == first
    assert native_train(shuffled, 600, 2, num_threads=1) == first
    assert native_train(shuffled, 600, 2, num_threads=3) == first
    # Cutting a text before " word" (between two words) changes no piece under gpt2: " word" keeps its space.
    words = texts[0].split(" ")
    mid = next(i for i in range(len(words) // 2, len(words)) if words[i - 1].isalpha() and words[i].isalpha())
    halves = [" ".join(words[:mid]), " " + " ".join(words[mid:])]
    assert native_train(halves + texts[1:], 600, 2) == first


@pytest.mark.parametrize("pattern", ["gpt2", "cl100k", "o200k"])
def test_file_chunking_does_not_change_the_result(corpora, tmp_path, monkeypatch, pattern):
    text = "".join(t[:20_000] for t in corpora.values())
    path = tmp_path / "corpus.txt"
    path.write_bytes(text.encode())
    whole = train_bpe([text], 700, pattern=pattern, show_progress=False)
    monkeypatch.setattr(_train_bpe, "_CHUNK_CHARS", 3000)  # ~35 chunks, cut at line ends
    chunked = train_bpe(path, 700, pattern=pattern, show_progress=False)
    assert [chunked.token_bytes(i) for i in range(700)] == [whole.token_bytes(i) for i in range(700)]


# ==== Arguments ====


def test_special_tokens_are_cut_out_of_the_corpus():
    tok = train_bpe([f"hello{EOT}world{EOT}"] * 20, 300, special_tokens=[EOT, "<pad>"], show_progress=False)
    learned = [tok.token_bytes(i) for i in range(256, tok.vocab_size - 2)]
    assert learned and not any(b"|" in t or b"<" in t for t in learned)
    assert tok.special_tokens == {EOT: tok.vocab_size - 2, "<pad>": tok.vocab_size - 1}


def test_min_frequency_and_small_corpus():
    tok = train_bpe(["abab abab"], 1000, min_frequency=2, show_progress=False)
    assert tok.vocab_size < 1000  # the corpus ran out of pairs seen twice
    assert tok.decode(tok.encode("abab")) == "abab"
    assert train_bpe(["abab"], 256, show_progress=False).vocab_size == 256


def test_corpus_forms(tmp_path):
    (tmp_path / "a.txt").write_text("one two three\n" * 30, encoding="utf-8")
    (tmp_path / "b.txt").write_text("two three four\n" * 30, encoding="utf-8")
    files = [tmp_path / "a.txt", str(tmp_path / "b.txt")]
    from_files = train_bpe(files, 300, show_progress=False)
    from_texts = train_bpe(iter(p.read_text() for p in map(Path, files)), 300, show_progress=False)
    from_list = train_bpe([Path(p).read_text() for p in files], 300, show_progress=False)
    ids = [from_files.token_bytes(i) for i in range(from_files.vocab_size)]
    assert ids == [from_texts.token_bytes(i) for i in range(from_texts.vocab_size)]
    assert ids == [from_list.token_bytes(i) for i in range(from_list.vocab_size)]
    assert train_bpe(tmp_path / "a.txt", 262, show_progress=False).vocab_size == 262


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(vocab_size=255), "at least 256"),
        (dict(vocab_size=256, special_tokens=[EOT]), "at least 256"),
        (dict(vocab_size=300.0), "must be an int"),
        (dict(pattern="gpt3"), "unknown pattern"),
        (dict(pattern="(unclosed"), "regex"),
        (dict(pattern=""), "pattern must be"),
        (dict(special_tokens=EOT), "list of str"),
        (dict(special_tokens=[EOT, EOT]), "duplicates"),
        (dict(special_tokens=[""]), "non-empty"),
        (dict(min_frequency=-1), "min_frequency"),
        (dict(min_frequency=True), "min_frequency"),
    ],
)
def test_bad_arguments(kwargs, message):
    kwargs = {"vocab_size": 300, "show_progress": False, **kwargs}
    with pytest.raises(ValueError, match=message):
        train_bpe(["some text to train on"], **kwargs)


@pytest.mark.parametrize("corpus", [[], [""], iter([]), ["", ""]])
def test_empty_corpus(corpus):
    with pytest.raises(ValueError, match="empty"):
        train_bpe(corpus, 300, show_progress=False)


@pytest.mark.parametrize("corpus", [[b"bytes"], iter(["ok", 3]), 42, b"raw bytes"])
def test_non_str_corpus(corpus):
    with pytest.raises(ValueError, match="str|path"):
        train_bpe(corpus, 300, show_progress=False)


def test_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError):
        train_bpe(tmp_path / "nope.txt", 300, show_progress=False)
    with pytest.raises(FileNotFoundError):
        train_bpe(["data/nope.txt"], 300, show_progress=False)
    (tmp_path / "a.txt").write_text("text", encoding="utf-8")
    with pytest.raises(ValueError, match="mixes"):
        train_bpe([str(tmp_path / "a.txt"), "some text"], 300, show_progress=False)


# ==== Progress and cancellation ====


def test_progress_line(capsys):
    train_bpe(["the cat sat on the mat " * 20], 280, show_progress=True)
    err = capsys.readouterr().err
    assert "merges" in err and err.endswith("\n")


def test_progress_callback_and_cancel():
    trainer = _bpe.BpeTrainer("gpt2")
    trainer.add_text(" ".join(f"w{i} w{i % 7}x{i % 13}" for i in range(3000)))
    seen = []
    tokens, merges = trainer.train(500, 2, lambda done, total: seen.append((done, total)))
    assert seen[0] == (0, 500) and seen[-1][0] <= len(merges) and len(seen) <= 110

    def interrupt(done, total):
        if done >= 10:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        trainer.train(500, 2, interrupt)
    with pytest.raises(RuntimeError, match="cancelled"):
        trainer.train(500, 2, lambda done, total: done < 10)
    assert trainer.train(500, 2, None) == (tokens, merges)  # still usable after a cancelled run
