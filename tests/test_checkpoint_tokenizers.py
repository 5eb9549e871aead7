"""The seed projects' small JSON tokenizers (llm-scratch word-level `</w>` BPE, L1 character / byte-level vocab)."""

import json

import pytest

from fastllm.checkpoints.tokenizers import L1Tokenizer, WordBPETokenizer, load_tokenizer_file
from fastllm.tokenizer import Tokenizer

SPECIALS_SCRATCH = {"<pad>": 0, "<bos>": 1, "<eos>": 2, "<unk>": 3}
SPECIALS_L1 = {"<pad>": 0, "<unk>": 1, "<bos>": 2, "<eos>": 3}


def word_bpe():
    symbols = ["a", "b", "c", "a</w>", "b</w>", "c</w>"]
    merges = [["b", "c</w>"], ["a", "a"], ["a", "bc</w>"], ["aa", "b"], ["a", "b"]]
    vocab = {**SPECIALS_SCRATCH, **{s: 4 + i for i, s in enumerate(symbols)}}
    for a, b in merges:
        vocab[a + b] = len(vocab)
    return WordBPETokenizer(vocab, merges), vocab


def test_word_bpe_applies_merges_by_rank():
    tok, vocab = word_bpe()
    # "abc": (b,c</w>) rank 0 beats (a,b) rank 4 (first-applicable order would give [ab, c</w>]) -> [a, bc</w>]
    # -> (a,bc</w>) rank 2 -> [abc</w>]
    assert tok.encode("abc") == [1, vocab["abc</w>"]]
    # "aabc": (a,a) rank 1 vs (b,c</w>) rank 0: bc</w> first, then aa, then (aa, bc</w>) has no merge
    assert tok.encode("aabc", add_bos=False) == [vocab["aa"], vocab["bc</w>"]]
    # "aab": (a,a) rank 1 -> [aa, b</w>]; (aa, b</w>) is not (aa, b): no merge
    assert tok.encode("aab", add_bos=False, add_eos=True) == [vocab["aa"], vocab["b</w>"], 2]
    assert tok.encode("ax", add_bos=False) == [vocab["a"], 3]  # x</w> is unknown
    assert tok.decode(tok.encode("abc  aabc\n c")) == "abc aabc c"  # whitespace collapses to single spaces
    assert tok.decode([vocab["a"], vocab["bc</w>"], 2, 0]) == "abc"
    assert tok.special_tokens == SPECIALS_SCRATCH and tok.eot_token == 2 and tok.bos_token == 1
    assert tok.vocab_size == len(vocab) and tok.id_to_token(vocab["aa"]) == "aa" and tok.token_to_id("zz") is None


def test_l1_char_era():
    vocab = {**SPECIALS_L1, **{c: 4 + i for i, c in enumerate(" abcdefghijklmnopqrstuvwxyz.")}}
    tok = L1Tokenizer(vocab, SPECIALS_L1)
    assert tok.era == "char"
    ids = tok.encode("Hello, World.")
    assert ids[0] == 2 and ids.count(1) == 1  # <bos>, "," unknown
    assert tok.decode(ids) == "hello world."  # lower-cased at encode, <unk> and specials dropped


def test_l1_bytelevel_era():
    vocab = {**SPECIALS_L1, "hello": 4, "world": 5, "Ġ": 6, "w": 7, "o": 8, "r": 9, "l": 10, "d": 11, "!": 12}
    tok = L1Tokenizer(vocab, SPECIALS_L1)
    assert tok.era == "bytelevel"
    # pieces "hello", " world", "!", " é": whole pieces map; "Ġworld" falls apart into symbols; é's bytes are unknown
    assert tok.encode("hello world! é", add_bos=False) == [4, 6, 7, 8, 9, 10, 11, 12, 6, 1, 1]
    assert tok.decode([2, 4, 6, 7, 8, 9, 10, 11, 12, 1, 3]) == "hello world!"
    merged = L1Tokenizer(vocab | {"Ġw": 13, "Ġwo": 14}, SPECIALS_L1, {"Ġ w": 0, "Ġw o": 1})
    assert merged.encode(" wor", add_bos=False) == [14, 9]


def test_load_tokenizer_file_tells_formats_apart(tmp_path):
    tok, _ = word_bpe()
    tok.save(tmp_path / "scratch.json")
    again = load_tokenizer_file(tmp_path / "scratch.json")
    assert isinstance(again, WordBPETokenizer) and again.encode("aabc abc") == tok.encode("aabc abc")
    l1 = L1Tokenizer({**SPECIALS_L1, "a": 4, "b": 5}, SPECIALS_L1)
    l1.save(tmp_path / "l1.json")
    again = load_tokenizer_file(tmp_path / "l1.json")
    assert isinstance(again, L1Tokenizer) and again.encode("ab") == [2, 4, 5]
    Tokenizer.gpt2().save(tmp_path / "hf.json")
    assert load_tokenizer_file(tmp_path / "hf.json").encode("Hello world") == [15496, 995]
    (tmp_path / "odd.json").write_text(json.dumps({"tokens": []}))
    with pytest.raises(ValueError, match="unknown tokenizer format"):
        load_tokenizer_file(tmp_path / "odd.json")
