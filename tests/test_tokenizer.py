"""Parity and robustness of `fastllm.tokenizer.Tokenizer` (C++ core `fastllm._bpe`).

Oracles, all independent of the code under test:
  * tiktoken 0.14, built offline from the rank files in ../shared/data with the exact pattern strings and special
    tokens of `tiktoken_ext.openai_public` (read by calling its constructors with the rank loaders stubbed out).
  * Hugging Face tokenizers 0.23: GPT-2 from encoder.json + vocab.bpe with the ByteLevel pre-tokenizer; cl100k as
    a Split pre-tokenizer (the regex spelling HF tokenizer.json files use; tiktoken's possessive spelling does not
    work in Oniguruma, where `\\p{N}{1,3}+` is a nested repeat) over merges derived from the ranks.
  * `fastllm._bpe_py`, the pure-Python oracle (itself checked against tiktoken here).

Unicode versions. tiktoken's Rust regex and HF's Oniguruma agree on every code point for the classes these
patterns use (\\s, \\p{L}, Lu/Ll/Lt/Lm/Lo, \\p{M}, \\p{N}; measured over all 1.1M code points), so the tiktoken
and HF comparisons run on any text hypothesis makes. The `regex` module behind the Python oracle carries Unicode 17
tables (tiktoken: 16): it classifies ~4,600 newly assigned code points (and U+0295, Ll -> Lo) differently. Text for
oracle comparisons therefore keeps only characters whose general category is the same in the `regex` module and in
`unicodedata` (Unicode 14 on Python 3.11); the rest are replaced by '?'.

FASTLLM_MAX_EXAMPLES sets the hypothesis budget per test (default 200).
"""

from __future__ import annotations

import json
import os
import random
import time
import unicodedata
from functools import lru_cache
from pathlib import Path
from unittest import mock

import pytest
import regex
import tiktoken
import tiktoken.load
import tiktoken_ext.openai_public as openai_public
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers
from tokenizers import Tokenizer as HFTokenizer

from fastllm import _bpe_py
from fastllm.tokenizer import Tokenizer

SHARED = Path(os.environ.get("FASTLLM_SHARED", Path(__file__).resolve().parents[1].parent / "shared"))
CORPORA = SHARED / "corpora"
CORPUS_FILES = sorted(CORPORA.glob("*.txt"))
GPT2_DIR = SHARED / "data" / "gpt2"
ENCODER_JSON, VOCAB_BPE, GPT2_TIKTOKEN = GPT2_DIR / "encoder.json", GPT2_DIR / "vocab.bpe", GPT2_DIR / "gpt2.tiktoken"
CL100K_TIKTOKEN = SHARED / "data" / "cl100k" / "cl100k_base.tiktoken"
MAX_EXAMPLES = int(os.environ.get("FASTLLM_MAX_EXAMPLES", "200"))
SLICE_CHARS = 20_000  # corpus slices for the (slow) Python oracle
EOT = "<|endoftext|>"

# cl100k as Hugging Face tokenizer.json files spell it (Llama 3): non-possessive, equivalent to tiktoken's pattern.
HF_CL100K_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"""
    r"""|\s+(?!\S)|\s+"""
)

hyp_settings = settings(max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))


def require(*paths: Path) -> None:
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        pytest.skip(f"shared data not found (expected ../shared beside the repo): {', '.join(missing)}")


if not CORPUS_FILES:
    CORPUS_FILES = [CORPORA / "missing.txt"]  # one parameter, which skips through require() with the reason


@lru_cache(maxsize=None)
def corpus(path: Path) -> str:
    require(path)
    return path.read_text(encoding="utf-8")


def corpus_slice(path: Path) -> str:
    return corpus(path)[:SLICE_CHARS]


# ---- reference encoders -------------------------------------------------------------------------------------


@lru_cache(maxsize=None)
def openai_spec(constructor: str) -> tuple[str, dict[str, int]]:
    """(pat_str, special_tokens) of a tiktoken_ext.openai_public constructor, without downloading its ranks."""
    with (
        mock.patch.object(openai_public, "load_tiktoken_bpe", return_value={}),
        mock.patch.object(openai_public, "data_gym_to_mergeable_bpe_ranks", return_value={}),
    ):
        spec = getattr(openai_public, constructor)()
    return spec["pat_str"], spec["special_tokens"]


@lru_cache(maxsize=None)
def ranks(path: Path) -> dict[bytes, int]:
    require(path)
    return tiktoken.load.load_tiktoken_bpe(str(path))


def _wrapped(pattern: str) -> str:
    """The same regex spelled differently, so fastllm cannot recognise it and must run its regex engine."""
    return f"(?:{pattern})"


# name -> (rank file, tiktoken constructor whose pattern/specials to use, how fastllm is given the pattern)
ENCODINGS = {
    "gpt2": (GPT2_TIKTOKEN, "gpt2", "gpt2"),
    "cl100k": (CL100K_TIKTOKEN, "cl100k_base", "cl100k"),
    "o200k-pattern": (CL100K_TIKTOKEN, "o200k_base", "o200k"),  # o200k pre-tokenizer over the cl100k ranks
    "gpt2-regex": (GPT2_TIKTOKEN, "gpt2", _wrapped),
    "cl100k-regex": (CL100K_TIKTOKEN, "cl100k_base", _wrapped),
}
MAIN = ["gpt2", "cl100k"]
VARIANTS = ["o200k-pattern", "gpt2-regex", "cl100k-regex"]


def _specials(name: str) -> dict[str, int]:
    path, constructor, _ = ENCODINGS[name]
    # The o200k variant runs over the cl100k ranks, so it keeps cl100k's specials (o200k's ids lie past them).
    return openai_spec("cl100k_base" if path == CL100K_TIKTOKEN else constructor)[1]


@lru_cache(maxsize=None)
def tt(name: str) -> tiktoken.Encoding:
    path, constructor, fastllm_pattern = ENCODINGS[name]
    pattern = openai_spec(constructor)[0]
    if callable(fastllm_pattern):
        pattern = fastllm_pattern(pattern)
    return tiktoken.Encoding(name, pat_str=pattern, mergeable_ranks=ranks(path), special_tokens=_specials(name))


@lru_cache(maxsize=None)
def native(name: str) -> Tokenizer:
    if name == "gpt2":
        return Tokenizer.gpt2()
    path, constructor, fastllm_pattern = ENCODINGS[name]
    require(path)
    pattern = fastllm_pattern(openai_spec(constructor)[0]) if callable(fastllm_pattern) else fastllm_pattern
    return Tokenizer.from_tiktoken(path, pattern=pattern, special_tokens=_specials(name))


@lru_cache(maxsize=None)
def tt_ids(name: str, path: Path) -> list[int]:
    return tt(name).encode_ordinary(corpus(path))


@lru_cache(maxsize=None)
def hf_gpt2() -> HFTokenizer:
    require(ENCODER_JSON, VOCAB_BPE)
    tok = HFTokenizer(models.BPE.from_file(str(ENCODER_JSON), str(VOCAB_BPE)))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(EOT, special=True, normalized=False)])
    return tok


@lru_cache(maxsize=None)
def hf_cl100k() -> HFTokenizer:
    """cl100k as an HF byte-level BPE: Split(regex) + ByteLevel, merges derived from the ranks, specials added."""
    r = ranks(CL100K_TIKTOKEN)
    to_str = _bpe_py.token_bytes_to_str
    specials = _specials("cl100k")
    # The specials go into the vocabulary too: HF gives an added token its vocabulary id, else the next free id.
    vocab = {to_str(token): rank for token, rank in r.items()} | specials
    merges = [(to_str(a), to_str(b)) for a, b in _bpe_py.merges_from_ranks(r)]
    tok = HFTokenizer(models.BPE(vocab, merges))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(HF_CL100K_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in sorted(specials, key=specials.get)])
    return tok


def hf_ids(tok: HFTokenizer, text: str) -> list[int]:
    return tok.encode(text, add_special_tokens=False).ids


@lru_cache(maxsize=None)
def hf_file(which: str, directory: str) -> Path:
    """An HF-written tokenizer.json for `which` ("gpt2" | "cl100k")."""
    path = Path(directory) / f"hf_{which}.json"
    (hf_gpt2() if which == "gpt2" else hf_cl100k()).save(str(path))
    return path


@pytest.fixture(scope="session")
def hf_dir(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("hf"))


# ---- Python oracles -----------------------------------------------------------------------------------------


def _cl100k_merges_oracle() -> _bpe_py.PyBPE:
    r, to_str = ranks(CL100K_TIKTOKEN), _bpe_py.token_bytes_to_str
    vocab = {to_str(token): i for token, i in r.items()}
    merges = [(to_str(a), to_str(b)) for a, b in _bpe_py.merges_from_ranks(r)]
    return _bpe_py.PyBPE.from_vocab_merges(vocab, merges, "cl100k", _specials("cl100k"))


# name -> (oracle builder, the tiktoken encoding it must equal, the fastllm tokenizer it must equal (hf_dir -> tok))
ORACLES = {
    "gpt2-ranks": (
        lambda: _bpe_py.PyBPE.from_tiktoken_file(GPT2_TIKTOKEN, "gpt2", _specials("gpt2")),
        "gpt2",
        lambda d: Tokenizer.from_tiktoken(GPT2_TIKTOKEN, pattern="gpt2", special_tokens={EOT: 50256}),
    ),
    "gpt2-merges": (
        lambda: _bpe_py.PyBPE.from_files(ENCODER_JSON, VOCAB_BPE, "gpt2", _specials("gpt2")),
        "gpt2",
        lambda d: Tokenizer.from_vocab_merges(ENCODER_JSON, VOCAB_BPE, special_tokens={EOT: 50256}),
    ),
    "cl100k-ranks": (
        lambda: _bpe_py.PyBPE.from_tiktoken_file(CL100K_TIKTOKEN, "cl100k", _specials("cl100k")),
        "cl100k",
        lambda d: native("cl100k"),
    ),
    "cl100k-merges": (_cl100k_merges_oracle, "cl100k", lambda d: Tokenizer.from_file(hf_file("cl100k", d))),
    "o200k-pattern": (
        lambda: _bpe_py.PyBPE.from_tiktoken_file(CL100K_TIKTOKEN, "o200k", _specials("o200k-pattern")),
        "o200k-pattern",
        lambda d: native("o200k-pattern"),
    ),
}


@lru_cache(maxsize=None)
def oracle(name: str) -> _bpe_py.PyBPE:
    require(ENCODER_JSON, VOCAB_BPE, GPT2_TIKTOKEN, CL100K_TIKTOKEN)
    return ORACLES[name][0]()


@lru_cache(maxsize=None)
def oracle_peer(name: str, hf_dir: str) -> Tokenizer:
    return ORACLES[name][2](hf_dir)


@lru_cache(maxsize=None)
def oracle_slice_ids(name: str, path: Path) -> list[int]:
    return oracle(name).encode_ordinary(corpus_slice(path))


@lru_cache(maxsize=None)
def _same_category_in_both_tables(ch: str) -> bool:
    return regex.fullmatch(r"\p{%s}" % unicodedata.category(ch), ch) is not None


def unicode_stable(text: str) -> str:
    """Replace characters the oracle's `regex` tables classify differently from Unicode 14 (see module doc)."""
    return "".join(c if _same_category_in_both_tables(c) else "?" for c in text)


# ---- helpers ------------------------------------------------------------------------------------------------


def assert_ids(got: list[int], expected: list[int], what: str, decode=None) -> None:
    """Equality with a short, readable report of the first difference (not a 300k-element list diff)."""
    if got == expected:
        return
    i = next((k for k, (a, b) in enumerate(zip(got, expected)) if a != b), min(len(got), len(expected)))
    lo = max(0, i - 3)
    msg = f"{what}: ids differ at index {i} (len got {len(got)}, expected {len(expected)}): "
    msg += f"got {got[lo : i + 5]} expected {expected[lo : i + 5]}"
    if decode is not None:
        msg += f"; expected text there {decode(expected[lo : i + 5])!r}"
    pytest.fail(msg)


def chunks(text: str, lines_per_chunk: int = 200) -> list[str]:
    lines = text.splitlines(keepends=True)
    return ["".join(lines[i : i + lines_per_chunk]) for i in range(0, len(lines), lines_per_chunk)]


# ---- hypothesis strategies ----------------------------------------------------------------------------------

WHITESPACE = [
    "\t", "\n", "\x0b", "\x0c", "\r", " ", "\r\n", "\x1c", "\x1d", "\x1e", "\x1f", "\x85", "\xa0", "\u1680",
    *map(chr, range(0x2000, 0x200B)), "\u2028", "\u2029", "\u202f", "\u205f", "\u3000",
    "\u180e", "\u200b", "\ufeff",  # formerly or commonly mistaken for whitespace: not \s
]  # fmt: skip
EMOJI = [
    "😀", "👍🏽", "👨‍👩‍👧‍👦", "🏳️‍🌈", "❤️", "🇩🇪", "🧑🏿‍💻", "🫠", "👩‍❤️‍💋‍👨", "1️⃣", "©️", "\U0001faf8",
]  # fmt: skip
CONTRACTIONS = [
    "'s", "'S", "'t", "'T", "'re", "'RE", "'rE", "'Re", "'ve", "'VE", "'vE", "'m", "'M", "'ll", "'LL", "'lL", "'Ll",
    "'d", "'D", "'ſ", "ſ", "'ſt", "'K", "'\u212a", "'x", "''s", "’s", "'", "'İ", "'ß", "'ﬅ", "n't", "N'T", "'S'",
]  # fmt: skip
WORDS = [
    "hello", " world", "The", "DON", "ÉCOLE", "straße", "İstanbul", "ﬁne", "Ǆemal", "ǅ", "ǈ", "μ", "Ωmega",
    "ΣΊΣΥΦΟΣ", "Привет", "שלום", "مرحبا", "नमस्ते", "ᾼ", "ʰ", "a", "x", "I", "def", "__init__", "x1", "v2.0",
]  # fmt: skip
SPECIAL_TEXTS = [
    EOT, "<|endoftext", "endoftext|>", "<|", "|>", "<|fim_prefix|>", "<|fim_middle|>", "<|endofprompt|>",
    EOT + EOT, "<" + EOT + ">", "<|endoftext|endoftext|>", "<|im_start|>",
]  # fmt: skip


def _runs(alphabet: list[str], max_len: int = 40):
    return st.tuples(st.sampled_from(alphabet), st.integers(1, max_len)).map(lambda t: t[0] * t[1])


FRAGMENTS = {
    "control": st.characters(max_codepoint=0x1F)
    | st.characters(categories=["Cc", "Cf"])
    | st.sampled_from(["\x7f", "\x80", "\x85", "\x9f", "\u200d", "\u2066", "\u00ad", "\x00"]),
    "whitespace": st.sampled_from(WHITESPACE)
    | _runs(WHITESPACE)
    | _runs([" ", "\n", "\t"], 200)
    | st.lists(st.sampled_from(WHITESPACE), max_size=30).map("".join),
    "digits": st.text("0123456789", min_size=1, max_size=14)
    | st.text(st.characters(categories=["Nd", "Nl", "No"]), min_size=1, max_size=6),
    "emoji": st.sampled_from(EMOJI),
    "cjk": st.text(
        st.characters(min_codepoint=0x4E00, max_codepoint=0x9FFF)
        | st.characters(min_codepoint=0x3040, max_codepoint=0x30FF)
        | st.characters(min_codepoint=0xAC00, max_codepoint=0xD7A3)
        | st.sampled_from(["。", "、", "「", "」", "！", "？", "　"]),
        min_size=1,
        max_size=10,
    ),
    "combining": st.text(st.characters(categories=["Mn", "Mc", "Me"]), min_size=1, max_size=4),
    "contractions": st.sampled_from(CONTRACTIONS),
    "specials": st.sampled_from(SPECIAL_TEXTS),
    "punctuation": st.text(st.sampled_from("!\"#$%&()*+,-./:;<=>?@[\\]^_`{|}~«»—…“”'/"), min_size=1, max_size=6),
}
_FILLER = st.sampled_from(WORDS) | st.sampled_from([" ", "\n", " ", "  "]) | st.text(max_size=3)


def _heavy_in(fragment):
    return st.lists(fragment | _FILLER, max_size=40).map("".join)


STRATEGIES = {
    "text": st.text(),
    "mixed": st.lists(st.one_of(*FRAGMENTS.values(), _FILLER), max_size=50).map("".join),
    **{kind: _heavy_in(fragment) for kind, fragment in FRAGMENTS.items()},
}


# ==== the Python oracle ======================================================================================


def test_oracle_patterns_are_tiktokens():
    assert _bpe_py.PATTERNS["gpt2"] == openai_public.r50k_pat_str == openai_spec("gpt2")[0]
    assert _bpe_py.PATTERNS["cl100k"] == openai_spec("cl100k_base")[0]
    assert _bpe_py.PATTERNS["o200k"] == openai_spec("o200k_base")[0]


def test_oracle_byte_alphabet():
    """The byte-level alphabet is HF's, and encoder.json read through it equals gpt2.tiktoken."""
    table = _bpe_py.bytes_to_unicode()
    assert sorted(table) == list(range(256))
    assert set(table.values()) == set(pre_tokenizers.ByteLevel.alphabet())
    assert table[ord(" ")] == "Ġ" and table[ord("\n")] == "Ċ"
    require(ENCODER_JSON)
    encoder = json.loads(ENCODER_JSON.read_text(encoding="utf-8"))
    from_json = {_bpe_py.token_str_to_bytes(s): i for s, i in encoder.items() if s != EOT}
    assert from_json == ranks(GPT2_TIKTOKEN)


@pytest.mark.parametrize("path", CORPUS_FILES, ids=lambda p: p.stem)
@pytest.mark.parametrize("name", list(ORACLES))
def test_oracle_matches_tiktoken_on_corpus_slices(name, path):
    text = corpus_slice(path)
    enc = tt(ORACLES[name][1])
    assert_ids(oracle_slice_ids(name, path), enc.encode_ordinary(text), f"oracle {name}", enc.decode)


@pytest.mark.parametrize("name", list(ORACLES))
@hyp_settings
@given(text=st.one_of(STRATEGIES["text"], STRATEGIES["mixed"]).map(unicode_stable))
def test_oracle_matches_tiktoken_on_generated_text(name, text):
    enc = tt(ORACLES[name][1])
    assert oracle(name).encode_ordinary(text) == enc.encode_ordinary(text)
    assert oracle(name).encode(text, allowed_special="all") == enc.encode(text, allowed_special="all")


# ==== parity with tiktoken and HF on the corpora ==============================================================


@pytest.mark.parametrize("path", CORPUS_FILES, ids=lambda p: p.stem)
@pytest.mark.parametrize("name", MAIN)
def test_corpus_matches_tiktoken(name, path):
    text, tok, enc = corpus(path), native(name), tt(name)
    expected = tt_ids(name, path)
    assert_ids(tok.encode_ordinary(text), expected, "encode_ordinary", enc.decode)
    assert_ids(tok.encode(text), expected, "encode", enc.decode)
    assert_ids(tok.encode(text, allowed_special="all"), expected, "encode(allowed_special='all')", enc.decode)
    [batch_one] = tok.encode_batch([text])
    assert_ids(batch_one, expected, "encode_batch([text])", enc.decode)
    parts = chunks(text)
    for got, want in zip(tok.encode_batch(parts), enc.encode_ordinary_batch(parts), strict=True):
        assert_ids(got, want, "encode_batch(chunks)", enc.decode)
    assert tok.decode_bytes(expected) == text.encode("utf-8")
    assert tok.decode(expected) == text


@pytest.mark.parametrize("path", CORPUS_FILES, ids=lambda p: p.stem)
@pytest.mark.parametrize("name", VARIANTS)
def test_corpus_matches_tiktoken_other_patterns(name, path):
    """The o200k scanner and the regex engine (patterns fastllm does not recognise) on whole files."""
    assert_ids(native(name).encode_ordinary(corpus(path)), tt_ids(name, path), name, tt(name).decode)


@pytest.mark.parametrize("path", CORPUS_FILES, ids=lambda p: p.stem)
def test_corpus_matches_hf(path):
    text = corpus(path)
    expected = hf_ids(hf_gpt2(), text)
    assert_ids(native("gpt2").encode(text, allowed_special="all"), expected, "vs HF", hf_gpt2().decode)


GPT2_LOADERS = {
    "gpt2()": lambda d: Tokenizer.gpt2(),
    "from_vocab_merges": lambda d: Tokenizer.from_vocab_merges(ENCODER_JSON, VOCAB_BPE, special_tokens={EOT: 50256}),
    "from_vocab_merges(str paths, default specials)": lambda d: Tokenizer.from_vocab_merges(
        str(ENCODER_JSON), str(VOCAB_BPE)
    ),
    "from_tiktoken": lambda d: Tokenizer.from_tiktoken(GPT2_TIKTOKEN, pattern="gpt2", special_tokens={EOT: 50256}),
    "from_tiktoken(r50k, default specials)": lambda d: Tokenizer.from_tiktoken(GPT2_TIKTOKEN, pattern="r50k"),
    "from_tiktoken(p50k)": lambda d: Tokenizer.from_tiktoken(
        GPT2_TIKTOKEN, pattern="p50k", special_tokens={EOT: 50256}
    ),
    "from_file(HF-written gpt2)": lambda d: Tokenizer.from_file(hf_file("gpt2", d)),
}


@lru_cache(maxsize=None)
def gpt2_loaded(what: str, hf_dir: str) -> Tokenizer:
    require(ENCODER_JSON, VOCAB_BPE, GPT2_TIKTOKEN)
    return GPT2_LOADERS[what](hf_dir)


@pytest.mark.parametrize("what", list(GPT2_LOADERS))
def test_gpt2_constructors_agree(what, hf_dir):
    """Every way to load GPT-2 gives tiktoken's ids on every corpus file."""
    tok = gpt2_loaded(what, hf_dir)
    assert tok.vocab_size == 50257
    assert tok.special_tokens == {EOT: 50256}
    for path in CORPUS_FILES:
        assert_ids(tok.encode_ordinary(corpus(path)), tt_ids("gpt2", path), f"{what} on {path.name}", tt("gpt2").decode)
    assert tok.encode(f"a{EOT}", allowed_special="all") == tt("gpt2").encode(f"a{EOT}", allowed_special="all")


def test_cl100k_from_hf_file(hf_dir):
    """cl100k from an HF-written tokenizer.json (Split regex pre-tokenizer, merges) gives tiktoken's ids."""
    tok = oracle_peer("cl100k-merges", hf_dir)
    assert tok.special_tokens == _specials("cl100k")
    for path in CORPUS_FILES:
        assert_ids(tok.encode_ordinary(corpus(path)), tt_ids("cl100k", path), path.name, tt("cl100k").decode)


# ==== parity on generated text ================================================================================


# The pattern variants share the BPE core with the main encodings; give them the strategies that stress pre-tokenizing.
GENERATED_CASES = [(name, kind) for name in MAIN for kind in STRATEGIES] + [
    (name, kind) for name in VARIANTS for kind in ["text", "mixed", "whitespace", "contractions", "digits", "combining"]
]


@pytest.mark.parametrize("name, kind", GENERATED_CASES)
@hyp_settings
@given(data=st.data())
def test_matches_tiktoken_on_generated_text(name, kind, data):
    text = data.draw(STRATEGIES[kind], label="text")
    tok, enc = native(name), tt(name)
    expected = enc.encode_ordinary(text)
    assert tok.encode_ordinary(text) == expected
    assert tok.encode(text, disallowed_special=set()) == expected
    assert tok.encode(text, allowed_special="all") == enc.encode(text, allowed_special="all")
    if any(special in text for special in enc.special_tokens_set):
        with pytest.raises(ValueError):
            tok.encode(text)
    else:
        assert tok.encode(text) == expected
    assert tok.decode_bytes(expected) == text.encode("utf-8")
    assert tok.decode(expected) == text
    assert tok.decode(tok.encode(text, allowed_special="all")) == text


@pytest.mark.parametrize("kind", list(STRATEGIES))
@hyp_settings
@given(data=st.data())
def test_matches_hf_on_generated_text(kind, data):
    text = data.draw(STRATEGIES[kind], label="text")
    ids = native("gpt2").encode(text, allowed_special="all")
    assert ids == hf_ids(hf_gpt2(), text)
    assert hf_gpt2().decode(ids, skip_special_tokens=False) == text


@pytest.mark.parametrize("name", list(ORACLES))
@hyp_settings
@given(text=st.one_of(STRATEGIES["text"], STRATEGIES["mixed"], STRATEGIES["whitespace"]).map(unicode_stable))
def test_oracle_matches_native_on_generated_text(name, text, hf_dir):
    tok, ref = oracle_peer(name, hf_dir), oracle(name)
    assert tok.encode_ordinary(text) == ref.encode_ordinary(text)
    assert tok.encode(text, allowed_special="all") == ref.encode(text, allowed_special="all")


@pytest.mark.parametrize("path", CORPUS_FILES, ids=lambda p: p.stem)
@pytest.mark.parametrize("name", list(ORACLES))
def test_oracle_matches_native_on_corpus_slices(name, path, hf_dir):
    got = oracle_peer(name, hf_dir).encode_ordinary(corpus_slice(path))
    assert_ids(got, oracle_slice_ids(name, path), f"native vs oracle {name}", oracle(name).decode)


@hyp_settings
@given(texts=st.lists(STRATEGIES["mixed"], max_size=12), threads=st.sampled_from([None, 1, 2, 3, 64]))
def test_encode_batch_matches_loop(texts, threads):
    tok = native("cl100k")
    assert tok.encode_ordinary_batch(texts, num_threads=threads) == [tok.encode_ordinary(t) for t in texts]
    assert tok.encode_batch(texts, num_threads=threads, allowed_special="all") == [
        tok.encode(t, allowed_special="all") for t in texts
    ]
    assert tok.encode_batch(texts, num_threads=threads, allowed_special="all") == tt("cl100k").encode_batch(
        texts, allowed_special="all"
    )


# ==== special tokens ==========================================================================================

SPECIAL_CASES = [
    "a<|endoftext|>b",
    "<|endoftext|>",
    "<|endoftext|><|endoftext|> x <|endoftext|>",
    "hi <|endoftext|>\n\n<|endoftext",
    "<|fim_prefix|>def f():<|fim_suffix|>\n<|fim_middle|>  return 1<|endofprompt|>",
    "no special at all <|endof text|>",
]


@pytest.mark.parametrize("text", SPECIAL_CASES)
@pytest.mark.parametrize("name", MAIN)
def test_special_token_policy(name, text):
    tok, enc = native(name), tt(name)
    present = sorted(s for s in enc.special_tokens_set if s in text)
    # Default: every special is disallowed, and the error names the one found.
    if present:
        with pytest.raises(ValueError) as err:
            tok.encode(text)
        assert any(s in str(err.value) for s in present), str(err.value)
        with pytest.raises(ValueError):
            enc.encode(text)
        with pytest.raises(ValueError):
            tok.encode_batch(["fine", text])
    else:
        assert tok.encode(text) == enc.encode(text)
    # Allowed: the special's id.
    assert tok.encode(text, allowed_special="all") == enc.encode(text, allowed_special="all")
    assert tok.encode_batch([text, text], allowed_special="all") == [enc.encode(text, allowed_special="all")] * 2
    assert tok.encode(text, allowed_special=set(present)) == enc.encode(text, allowed_special=set(present))
    # Plain text: encode_ordinary, or nothing disallowed.
    assert tok.encode_ordinary(text) == enc.encode_ordinary(text)
    assert tok.encode(text, disallowed_special=set()) == enc.encode(text, disallowed_special=())
    # Allow one special, let the others through as text.
    for special in present:
        want = enc.encode(text, allowed_special={special}, disallowed_special=())
        assert tok.encode(text, allowed_special={special}, disallowed_special=set()) == want
        others = [s for s in present if s != special]
        if others:
            with pytest.raises(ValueError) as err:
                tok.encode(text, allowed_special={special})
            assert any(s in str(err.value) for s in others), str(err.value)


def test_special_ids():
    gpt2 = native("gpt2")
    assert gpt2.encode(EOT, allowed_special="all") == [50256]
    assert gpt2.special_tokens == {EOT: 50256}
    assert native("cl100k").special_tokens == _specials("cl100k")
    assert native("cl100k").encode("<|endofprompt|>", allowed_special="all") == [100276]


# ==== bad input ===============================================================================================


@lru_cache(maxsize=None)
def _hf_gpt2_json() -> str:
    return hf_gpt2().to_str()


def _hf_json(change) -> str:
    """The HF GPT-2 tokenizer.json with `change(doc)` applied."""
    doc = json.loads(_hf_gpt2_json())
    change(doc)
    return json.dumps(doc)


def _model_with(**fields):
    return lambda: _hf_json(lambda doc: doc["model"].update(fields))


def _tiktoken_prefix(n_lines: int) -> str:
    return "".join(GPT2_TIKTOKEN.read_text().splitlines(keepends=True)[:n_lines])


# (file name, content maker, loader(path)) -- the content is a callable so the shared files are read lazily.
BAD_FILES = {
    "encoder-not-json": ("broken_encoder.json", lambda: "{not json", "vocab"),
    "encoder-truncated": ("broken_encoder.json", lambda: ENCODER_JSON.read_text()[:500_000], "vocab"),
    "encoder-is-list": ("broken_encoder.json", lambda: "[1, 2, 3]", "vocab"),
    "encoder-str-id": ("broken_encoder.json", lambda: '{"a": "x", "b": 1}', "vocab"),
    "encoder-float-id": ("broken_encoder.json", lambda: '{"a": 1.5}', "vocab"),
    "merges-one-symbol": ("broken_merges.txt", lambda: "#version: 0.2\nĠ t\nabc\n", "merges"),
    "merges-three-symbols": ("broken_merges.txt", lambda: "#version: 0.2\nĠ t\nĠ t x\n", "merges"),
    "merges-unknown-symbol": ("broken_merges.txt", lambda: "#version: 0.2\nĠ t\nĠzzqxw Ġyyqwv\n", "merges"),
    "json-not-json": ("broken_tokenizer.json", lambda: '{"model": ', "json"),
    "json-no-model": ("broken_tokenizer.json", lambda: _hf_json(lambda doc: doc.pop("model")), "json"),
    "json-wordpiece": ("broken_tokenizer.json", _model_with(type="WordPiece"), "json"),
    "json-unigram": ("broken_tokenizer.json", _model_with(type="Unigram"), "json"),
    "json-vocab-list": ("broken_tokenizer.json", _model_with(vocab=[1, 2]), "json"),
    "json-merge-one-symbol": ("broken_tokenizer.json", _model_with(merges=["Ġt"]), "json"),
    "json-merge-pair-of-one": ("broken_tokenizer.json", _model_with(merges=[["Ġt"]]), "json"),
    "json-merge-number": ("broken_tokenizer.json", _model_with(merges=[5]), "json"),
    "json-merge-unknown": ("broken_tokenizer.json", _model_with(merges=["Ġzzqxw Ġyyqwv"]), "json"),
    "tiktoken-truncated": ("broken.tiktoken", lambda: _tiktoken_prefix(300) + "IGFz", "tiktoken"),
    "tiktoken-bad-base64": ("broken.tiktoken", lambda: _tiktoken_prefix(300) + "!!!! 300\n", "tiktoken"),
    "tiktoken-rank-not-int": ("broken.tiktoken", lambda: _tiktoken_prefix(300) + "IGFzcw== x\n", "tiktoken"),
    "tiktoken-binary": ("broken.tiktoken", lambda: "\x00\xff\xfe garbage", "tiktoken"),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_malformed_file_raises_value_error_naming_it(case, tmp_path):
    require(ENCODER_JSON, VOCAB_BPE, GPT2_TIKTOKEN)
    filename, content, kind = BAD_FILES[case]
    path = tmp_path / filename
    path.write_text(content(), encoding="utf-8")
    load = {
        "vocab": lambda: Tokenizer.from_vocab_merges(path, VOCAB_BPE),
        "merges": lambda: Tokenizer.from_vocab_merges(ENCODER_JSON, path),
        "json": lambda: Tokenizer.from_file(path),
        "tiktoken": lambda: Tokenizer.from_tiktoken(path, pattern="gpt2"),
    }[kind]
    with pytest.raises(ValueError) as err:
        load()
    assert filename in str(err.value), f"message does not name the file: {err.value}"


def test_missing_file_raises():
    with pytest.raises((OSError, ValueError)) as err:
        Tokenizer.from_tiktoken("/nonexistent/dir/none.tiktoken")
    assert "none.tiktoken" in str(err.value)


# ---- tokenizer.json: the C++ reader of model.vocab and model.merges ---------------------------------------------
#
# The reader validates the whole file as strict JSON and decodes model.vocab and model.merges itself; Python checks
# the rest. Its rules beyond json.load's: a top-level "model" key, or a "vocab" or "merges" key inside it, that
# appears twice is an error (json.load would keep the last; HF refuses a repeated "model"); NaN/Infinity are not
# JSON; nesting deeper than 128 levels is refused; a token listed twice in model.vocab is an error.


def _gpt2_json_with(old: str, new: str) -> str:
    text = _hf_gpt2_json()
    assert old in text
    return text.replace(old, new, 1)


def _gpt2_json_model_twice() -> str:
    text = _hf_gpt2_json()
    model = text[text.index('"model":') :].removesuffix("}")
    return text.removesuffix("}") + "," + model + "}"


# name -> (file content, as str or bytes; a fragment the message must contain)
BAD_TOKENIZER_JSON = {
    "truncated-in-vocab": (lambda: _hf_gpt2_json()[:200_000], "not valid JSON"),
    "truncated-in-merges": (lambda: _hf_gpt2_json()[:-3000], "not valid JSON"),
    "truncated-in-string": (lambda: _hf_gpt2_json()[: _hf_gpt2_json().index('"Ġthe"') + 3], "not valid JSON"),
    "empty": (lambda: "", "not valid JSON"),
    "bad-escape-in-vocab": (lambda: _gpt2_json_with('"Ġthe":', '"Ġth\\q":'), "not valid JSON"),
    "bad-escape-in-merges": (lambda: _gpt2_json_with('["Ġ","t"]', '["Ġ","\\x74"]'), "not valid JSON"),
    "bad-u-escape": (lambda: _gpt2_json_with('"Ġthe":', '"\\u01G0the":'), "not valid JSON"),
    "bad-escape-elsewhere": (lambda: _gpt2_json_with('"<|endoftext|>"', '"<|end\\qtext|>"'), "not valid JSON"),
    "raw-newline-in-string": (lambda: _gpt2_json_with('"Ġthe":', '"Ġ\nthe":'), "not valid JSON"),
    "invalid-utf8-in-vocab": (
        lambda: _gpt2_json_with('"Ġthe":', '"Ġ\udcffthe":').encode("utf-8", "surrogateescape"),
        "invalid UTF-8",
    ),
    "overlong-utf8-in-merges": (
        lambda: _gpt2_json_with('["Ġ","t"]', '["Ġ","\udcc1\udcb4"]').encode("utf-8", "surrogateescape"),
        "invalid UTF-8",
    ),
    "invalid-utf8-elsewhere": (
        lambda: _gpt2_json_with('"<|endoftext|>"', '"<|end\udcffoftext|>"').encode("utf-8", "surrogateescape"),
        "invalid UTF-8",
    ),
    "encoded-surrogate": (
        lambda: _gpt2_json_with('"Ġthe":', '"\ud800the":').encode("utf-8", "surrogatepass"),
        "invalid UTF-8",
    ),
    "nan": (lambda: _gpt2_json_with('"truncation":null', '"truncation":NaN'), "not valid JSON"),
    "leading-zero": (lambda: _gpt2_json_with('"Ġthe":262', '"Ġthe":0262'), "not valid JSON"),
    "trailing-comma": (lambda: _gpt2_json_with('"Ġthe":262,', '"Ġthe":262,,'), "not valid JSON"),
    "extra-data": (lambda: _hf_gpt2_json() + " {}", "not valid JSON"),
    "too-deep": (lambda: _gpt2_json_with('"padding":null', '"padding":' + "[" * 500 + "]" * 500), "nested deeper"),
    "vocab-str-id": (
        lambda: _gpt2_json_with('"Ġthe":262', '"Ġthe":"262"'),
        "model.vocab['Ġthe'] = '262' is not a non-negative integer id",
    ),
    "vocab-float-id": (
        lambda: _gpt2_json_with('"Ġthe":262', '"Ġthe":262.0'),
        "model.vocab['Ġthe'] = 262.0 is not a non-negative integer id",
    ),
    "vocab-negative-id": (lambda: _gpt2_json_with('"Ġthe":262', '"Ġthe":-262'), "= -262 is not a non-negative"),
    "vocab-null-id": (lambda: _gpt2_json_with('"Ġthe":262', '"Ġthe":null'), "= None is not a non-negative"),
    "vocab-huge-id": (lambda: _gpt2_json_with('"Ġthe":262', '"Ġthe":1099511627776'), "is too large"),
    "vocab-char": (lambda: _gpt2_json_with('"Ġthe":', '"Ġ中":'), "has a character outside the byte-level alphabet"),
    "vocab-space": (lambda: _gpt2_json_with('"Ġthe":', '" the":'), "has a character outside the byte-level alphabet"),
    "vocab-token-twice": (lambda: _gpt2_json_with('"Ġthe":262', '"Ġthe":262,"\\u0120the":9999999'), "appears twice"),
    "merge-unknown-list": (
        lambda: _gpt2_json_with('["Ġ","t"]', '["Ġ","zzqxw"]'),
        "model.merges[0] = ['Ġ', 'zzqxw']: 'zzqxw' is not in model.vocab",
    ),
    "merge-unknown-str": (
        lambda: _gpt2_json_with('["Ġ","t"]', '"Ġzzqxw t"'),
        "model.merges[0] = 'Ġzzqxw t': 'Ġzzqxw' is not in model.vocab",
    ),
    "merge-outside-alphabet": (
        lambda: _gpt2_json_with('["h","e"]', '["h","中"]'),
        "model.merges[2] = ['h', '中']: '中' is not in model.vocab",
    ),
    "merge-makes-unknown": (lambda: _gpt2_json_with('["Ġ","t"]', '["Ġ","Ġ"]'), "makes a token that is not in"),
    "merge-three-strs": (lambda: _gpt2_json_with('["Ġ","t"]', '["Ġ","t","a"]'), "is not 'left right' or [left, right]"),
    "merge-three-symbols": (lambda: _gpt2_json_with('["Ġ","t"]', '"Ġ t a"'), "is not 'left right' or [left, right]"),
    "merge-number-in-list": (lambda: _gpt2_json_with('["Ġ","t"]', '["Ġ",5]'), "is not 'left right' or [left, right]"),
    "merge-object": (lambda: _gpt2_json_with('["Ġ","t"]', '{"Ġ":"t"}'), "is not 'left right' or [left, right]"),
    "merge-special": (lambda: _gpt2_json_with('["Ġ","t"]', '["Ġ","<|endoftext|>"]'), "is an added token"),
    "model-twice": (_gpt2_json_model_twice, '"model" appears twice'),
    "vocab-twice": (lambda: _gpt2_json_with('"merges":[', '"vocab":{},"merges":['), '"vocab" appears twice'),
    "merges-twice": (lambda: _gpt2_json_with('"vocab":{', '"merges":[],"vocab":{'), '"merges" appears twice'),
    "escaped-model-twice": (
        lambda: _gpt2_json_model_twice().replace('"model":', '"mod\\u0065l":', 1),
        '"model" appears twice',
    ),
    "unigram-vocab-list": (_model_with(type="Unigram", vocab=[["a", -1.0]]), "model type 'Unigram' is not supported"),
    "merges-missing": (lambda: _hf_json(lambda doc: doc["model"].pop("merges")), "model.merges is missing"),
    "top-level-list": (lambda: "[1, 2]", "the top level is not a JSON object"),
}


@pytest.mark.parametrize("case", list(BAD_TOKENIZER_JSON))
def test_malformed_tokenizer_json(case, tmp_path):
    """Each broken tokenizer.json raises ValueError naming the file and the problem (and never crashes)."""
    require(ENCODER_JSON, VOCAB_BPE)
    content, fragment = BAD_TOKENIZER_JSON[case]
    path = tmp_path / "broken_tokenizer.json"
    data = content()
    path.write_bytes(data if isinstance(data, bytes) else data.encode("utf-8"))
    with pytest.raises(ValueError) as err:
        Tokenizer.from_file(path)
    assert str(path) in str(err.value), f"message does not name the file: {err.value}"
    assert fragment in str(err.value), err.value
    if ("not valid JSON" in fragment or "UTF-8" in fragment) and case not in ("nan", "too-deep"):  # so does json.load
        with pytest.raises(ValueError):
            json.loads(data.decode("utf-8") if isinstance(data, bytes) else data)


def _respelled(change) -> str:
    """HF's GPT-2 tokenizer.json, parsed, changed, and written again in another spelling."""
    doc = json.loads(_hf_gpt2_json())
    return change(doc)


RESPELLED = {
    # Every non-ASCII character as a \u escape, with indentation.
    "ascii-escaped-indented": lambda doc: json.dumps(doc, ensure_ascii=True, indent=2),
    # Merges as "left right" strings (older files) rather than [left, right].
    "merges-as-strings": lambda doc: json.dumps(
        {**doc, "model": {**doc["model"], "merges": [" ".join(m) for m in doc["model"]["merges"]]}},
        ensure_ascii=False,
    ),
    # Merges before the vocabulary, and the keys spelled with escapes.
    "merges-first-escaped-keys": lambda doc: (
        json.dumps(
            {
                **{k: v for k, v in doc.items() if k != "model"},
                "model": {"merges": doc["model"]["merges"], **{k: v for k, v in doc["model"].items() if k != "merges"}},
            }
        )
        .replace('"model":', '"m\\u006fdel":')
        .replace('"merges":', '"merg\\u0065s":')
        .replace('"vocab":', '"v\\u006fcab":')
    ),
    # Decoys: "model", "vocab" and "merges" keys nested elsewhere are not the model's.
    "nested-decoys": lambda doc: json.dumps(
        {
            "decoder": {**doc["decoder"], "model": {"vocab": {"x": "y"}, "merges": 5}},
            **{k: v for k, v in doc.items() if k != "decoder"},
            "extra": [{"model": {"vocab": []}}, {"vocab": 1, "merges": {}}],
        }
    ),
    # Escapes that decode to the byte-level characters themselves ("\u0120" is "Ġ"), and "\/" for "/".
    "escaped-symbols": lambda doc: (
        json.dumps(doc, ensure_ascii=False)
        .replace('"Ġt"', '"\\u0120t"')
        .replace('["Ġ","t"]', '["\\u0120", "t"]')
        .replace('"/":', '"\\/":')
    ),
}


@pytest.mark.parametrize("spelling", list(RESPELLED))
def test_tokenizer_json_spellings_match_hf(spelling, tmp_path):
    """HF's GPT-2 tokenizer.json written other ways loads to the ids of that HF tokenizer. (HF itself cannot read
    "nested-decoys": its decoder refuses the unknown field.)"""
    require(ENCODER_JSON, VOCAB_BPE, *CORPUS_FILES)
    path = tmp_path / f"{spelling}.json"
    path.write_text(_respelled(RESPELLED[spelling]), encoding="utf-8")
    hf = hf_gpt2()
    tok = Tokenizer.from_file(path)
    assert tok.vocab_size == 50257 and tok.special_tokens == {EOT: 50256}
    for text in [corpus_slice(p) for p in CORPUS_FILES] + [f"a {EOT} b", "it's 12345 /\\ \u0120"]:
        assert_ids(tok.encode(text, allowed_special="all"), hf_ids(hf, text), spelling, tok.decode)


def test_tokenizer_json_document_is_used_once(tmp_path):
    """The decoded vocabulary moves into the core: a second core from the same document is an error, not a crash."""
    from fastllm import _bpe

    require(ENCODER_JSON, VOCAB_BPE)
    path = tmp_path / "tokenizer.json"
    path.write_text(_hf_gpt2_json(), encoding="utf-8")
    doc = _bpe.read_tokenizer_json(str(path))
    assert doc.vocab_problem is None and doc.merges_problem is None and json.loads(doc.rest)["model"]["vocab"] == {}
    _bpe.CoreBPE.from_tokenizer_json(doc, [(EOT, 50256, True)], "gpt2", False)
    with pytest.raises(ValueError):
        _bpe.CoreBPE.from_tokenizer_json(doc, [(EOT, 50256, True)], "gpt2", False)
    with pytest.raises(ValueError, match="cannot open"):
        _bpe.read_tokenizer_json(str(tmp_path / "missing.json"))
    with pytest.raises(ValueError):
        _bpe.read_tokenizer_json(str(tmp_path))  # a directory


@pytest.mark.parametrize("name", MAIN)
def test_decode_rejects_bad_ids(name):
    tok = native(name)
    bad = [tok.vocab_size, tok.vocab_size + 1000, -1, -(2**31), 2**31, 2**32, 2**40, 2**63, 2**64]
    if name == "cl100k":
        bad += [100261, 100275]  # the gap between <|fim_suffix|> (100260) and <|endofprompt|> (100276)
    for i in bad:
        for decode in (tok.decode, tok.decode_bytes):
            with pytest.raises(ValueError):
                decode([1, 2, i])
    for i in (tok.vocab_size, -1):
        with pytest.raises((ValueError, IndexError)):
            tok.id_to_token(i)


@pytest.mark.parametrize("bad", [b"bytes", None, 123, 4.5, ["list"]])
def test_non_str_input_raises_type_error(bad):
    tok = native("gpt2")
    with pytest.raises(TypeError):
        tok.encode(bad)
    with pytest.raises(TypeError):
        tok.encode_ordinary(bad)
    with pytest.raises(TypeError):
        tok.encode_batch(["fine", bad])
    with pytest.raises(TypeError):
        tok.encode_ordinary_batch(["fine", bad])


SURROGATE_CASES = ["\ud800", "a\udfffb", "\ud83d\ude00", "\ude00\ud83d", "x\ud800 \udbff\udfff y", "\udc00" * 5]


@pytest.mark.parametrize("text", SURROGATE_CASES, ids=ascii)
@pytest.mark.parametrize("name", MAIN)
def test_lone_surrogates_like_tiktoken(name, text):
    """tiktoken round-trips such text through UTF-16: lone surrogates become U+FFFD, a split pair is joined."""
    tok, enc = native(name), tt(name)
    assert tok.encode_ordinary(text) == enc.encode_ordinary(text)
    assert tok.encode(text) == enc.encode(text)
    assert tok.encode_batch([text]) == [enc.encode(text)]
    assert tok.decode(tok.encode(text)) == _bpe_py.fix_surrogates(text)


LONG_RUNS = {"a": "a", "e-acute": "\u00e9", "space": " ", "newline": "\n", "digit": "7", "cjk": "中"}


@pytest.mark.parametrize("run", list(LONG_RUNS))
@pytest.mark.parametrize("name", MAIN)
def test_million_char_run(name, run):
    text = LONG_RUNS[run] * 1_000_000
    tok, enc = native(name), tt(name)
    start = time.perf_counter()
    ids = tok.encode_ordinary(text)
    ours = time.perf_counter() - start
    start = time.perf_counter()
    expected = enc.encode_ordinary(text)
    theirs = time.perf_counter() - start
    print(f"{name} {run}*1M: fastllm {ours * 1e3:.1f} ms, tiktoken {theirs * 1e3:.1f} ms")
    assert_ids(ids, expected, f"{run} * 1M")
    assert_ids(tok._core.encode_ordinary(text, threads=8), expected, f"{run} * 1M on 8 threads")


def test_ten_megabytes_without_spaces():
    text = "".join(corpus(CORPORA / "english_kjv.txt").split())
    text = (text * (10_000_000 // len(text) + 1))[:10_000_000]
    tok = native("gpt2")
    start = time.perf_counter()
    ids = tok.encode_ordinary(text)
    print(f"gpt2 10 MB without whitespace: fastllm {(time.perf_counter() - start) * 1e3:.0f} ms")
    assert_ids(ids, tt("gpt2").encode_ordinary(text), "10 MB without whitespace")
    # One 10 MB piece (letters only): tiktoken needs ~10 s here, so check the round trip and a 1 MB prefix run.
    letters = regex.sub(r"[^A-Za-z]", "", text)
    start = time.perf_counter()
    ids = tok.encode_ordinary(letters)
    print(f"gpt2 one {len(letters) / 1e6:.1f} MB piece: fastllm {(time.perf_counter() - start) * 1e3:.0f} ms")
    assert tok.decode_bytes(ids) == letters.encode()
    assert_ids(tok.encode_ordinary(letters[:1_000_000]), tt("gpt2").encode_ordinary(letters[:1_000_000]), "1 MB piece")


# ==== the linear-time merge of long pieces =====================================================================

# Alphabets where merges interact most (few symbols, so every pair recurs), multi-byte characters, and bytes.
LINEAR_ALPHABETS = ["ab", "abc", "aab", "aeiourstln", "abcdefghijklmnopqrstuvwxyz", "éa", "中文a", "😀😁"]


def linear_pieces(seed: int, count: int) -> list[bytes]:
    """Random pieces over LINEAR_ALPHABETS, repeated words and random bytes, 1 to 3000 bytes."""
    rng = random.Random(seed)
    out = []
    for k in range(count):
        n = rng.randint(1, 3000 if k % 8 == 0 else 200)
        kind = k % (len(LINEAR_ALPHABETS) + 2)
        if kind < len(LINEAR_ALPHABETS):
            out.append("".join(rng.choices(LINEAR_ALPHABETS[kind], k=n)).encode()[:n])
        elif kind == len(LINEAR_ALPHABETS):
            out.append(bytes(rng.randrange(256) for _ in range(n)))
        else:
            word = "".join(rng.choices("abc", k=rng.randint(1, 6)))
            out.append((word * n).encode()[:n])
    return out


LINEAR_TOKENIZERS = {
    "gpt2-merges": lambda: native("gpt2"),
    "gpt2-ranks": lambda: Tokenizer.from_tiktoken(GPT2_TIKTOKEN, pattern="gpt2"),
    "cl100k-ranks": lambda: native("cl100k"),
}


@pytest.mark.parametrize("name", list(LINEAR_TOKENIZERS))
def test_linear_merge_matches_queue_and_scan(name):
    """Every piece, any bytes: the backtracking merge equals the rank-queue merge and the O(n^2) scan."""
    require(GPT2_TIKTOKEN, CL100K_TIKTOKEN)
    core = LINEAR_TOKENIZERS[name]()._core
    for piece in linear_pieces(seed=len(name), count=400):
        linear = core.merge_piece(piece, "linear")
        assert linear is not None, "the shipped vocabularies allow the linear path"
        assert_ids(linear, core.merge_piece(piece, "queue"), f"{name} {piece[:40]!r}... ({len(piece)} bytes)")
        if len(piece) <= 96:
            assert_ids(linear, core.merge_piece(piece, "small"), f"{name} {piece!r}")
    with pytest.raises(ValueError, match="algo"):
        core.merge_piece(b"ab", "fast")


@pytest.mark.parametrize("name", MAIN)
def test_linear_merge_matches_tiktoken_and_hf(name):
    """Single pieces (letters, CJK, emoji runs) through encode_ordinary once the tables exist, against
    tiktoken, HF (GPT-2) and, for short pieces, the Python oracle."""
    tok, enc = native(name), tt(name)
    tok._core.merge_piece(b"ab", "linear")  # builds the tables: from now on pieces over 24 bytes use them
    py = oracle("gpt2-merges" if name == "gpt2" else "cl100k-ranks")
    rng = random.Random(7)
    for k in range(300):
        alphabet = LINEAR_ALPHABETS[k % len(LINEAR_ALPHABETS)]
        text = "".join(rng.choices(alphabet, k=rng.randint(5, 2000 if k % 10 == 0 else 150)))
        ids = tok.encode_ordinary(text)
        assert_ids(ids, enc.encode_ordinary(text), f"{name} {text[:40]!r}...", enc.decode)
        if name == "gpt2":
            assert_ids(ids, hf_ids(hf_gpt2(), text), f"HF {text[:40]!r}...")
        if len(text) <= 100:
            assert_ids(ids, py.encode_ordinary(text), f"oracle {text!r}")


@lru_cache(maxsize=None)
def vocab_words(name: str) -> list[str]:
    """The vocabulary's tokens that are ASCII letters (a leading space dropped): words to run together."""
    words = {t.strip().decode() for t in tt(name)._mergeable_ranks if t.strip().isalpha() and t.strip().isascii()}
    return sorted(words)


@pytest.mark.parametrize("name", MAIN)
@hyp_settings
@given(data=st.data())
def test_linear_merge_of_words_run_together(name, data):
    """Words of the vocabulary run together without spaces (pieces where the longest match is often wrong and the
    merge backtracks most), a few such pieces to a text, once the tables exist (then text mostly of long pieces
    sends its pieces of 13 bytes and more there): tiktoken's ids, and the Python oracle's for short texts."""
    tok, enc = native(name), tt(name)
    tok._core.merge_piece(b"ab", "linear")  # builds the tables
    words = st.lists(st.sampled_from(vocab_words(name)), min_size=1, max_size=12)
    text = " ".join("".join(piece) for piece in data.draw(st.lists(words, min_size=1, max_size=6), label="pieces"))
    ids = tok.encode_ordinary(text)
    assert_ids(ids, enc.encode_ordinary(text), f"{name} {text[:60]!r}...", enc.decode)
    if len(text) <= 100:
        py = oracle("gpt2-merges" if name == "gpt2" else "cl100k-ranks")
        assert_ids(ids, py.encode_ordinary(text), f"oracle {text!r}")
    piece = text.replace(" ", "").encode()
    assert_ids(tok._core.merge_piece(piece, "linear"), tok._core.merge_piece(piece, "queue"), piece.decode())


def test_linear_tables_built_while_threads_encode():
    """Threads cross the table-building threshold together (one builds, the others wait); ids stay exact."""
    require(CL100K_TIKTOKEN)
    tok = Tokenizer.from_tiktoken(CL100K_TIKTOKEN, pattern="cl100k")  # fresh: no tables yet
    rng = random.Random(3)
    texts = ["".join(rng.choices("abcdefgh", k=200_000)) for _ in range(8)]  # 8 pieces, 1.6 MB in all
    for text, ids in zip(texts, tok.encode_ordinary_batch(texts, num_threads=4)):
        assert_ids(ids, tok._core.merge_piece(text.encode(), "queue"), "a 200 kB piece in a batch")


# ==== one giant piece over threads ============================================================================
# A piece of 2 * min_part bytes or more is cut into parts merged on threads and stitched where the parts' own
# encodings agree with the one coming from the left (bpe_backtrack.cpp). The core's encode_ordinary, encode and
# merge_piece take `threads` and `min_part` (tests only): parts of a few bytes put many cuts into short texts.


def _giant_texts(name: str) -> dict[str, str]:
    """Single pieces of 3 kB to 60 kB (tiktoken takes ~0.3 s per MB on such pieces) of the kinds of the bench."""
    rng = random.Random(11)
    english = regex.sub(r"[^A-Za-z]", "", corpus(CORPORA / "english_kjv.txt")[:80_000])
    return {
        "letters": "".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=40_000)),
        "english-no-spaces": english,
        "word": "tokenization" * 3000,
        "vocab-words": "".join(rng.choices(vocab_words(name), k=6000)),
        "a-run": "a" * 30_001,
        "e-acute-run": "\u00e9" * 20_000,
        "emoji-run": "\U0001f600" * 10_000,
        "cjk": "".join(rng.choices([chr(c) for c in range(0x4E00, 0xA000)], k=10_000)),
        "ab": "".join(rng.choices("ab", k=30_000)),
        "aab-runs": "".join("a" * rng.randint(1, 40) + "b" for _ in range(2000)),
    }


@pytest.mark.parametrize("name", MAIN)
def test_giant_piece_parts_match_tiktoken(name):
    """Every kind of piece, 2 to 8 parts, parts down to one byte: tiktoken's ids and the serial merge's."""
    from fastllm import _bpe

    require(*CORPUS_FILES)
    tok, enc = native(name), tt(name)
    core = tok._core
    core.merge_piece(b"ab", "linear")  # builds the tables
    rng = random.Random(5)
    for kind, text in _giant_texts(name).items():
        expected = enc.encode_ordinary(text)
        assert len(_bpe.pretokenize(text, core.pattern)) == 1, f"{kind} is one piece"
        assert_ids(core.merge_piece(text.encode(), "linear"), expected, f"{name} {kind} serial", enc.decode)
        for threads in range(2, 9):
            min_part = rng.choice([1, 7, 300, 4096])
            what = f"{name} {kind} threads={threads} min_part={min_part}"
            assert_ids(core.encode_ordinary(text, threads=threads, min_part=min_part), expected, what, enc.decode)


@pytest.mark.parametrize("name", MAIN)
@hyp_settings
@given(data=st.data())
def test_giant_piece_parts_any_bytes(name, data):
    """Any bytes (not one piece under the pattern: merge_piece takes them whole), any cuts: the serial merge's ids."""
    core = native(name)._core
    alphabet = data.draw(st.sampled_from([b"ab", b"abc", b"a\xc3\xa9", b"\xe4\xb8\x80a", bytes(range(256))]))
    size = data.draw(st.integers(1, 3000), label="size")
    piece = bytes(data.draw(st.lists(st.sampled_from(alphabet), min_size=size, max_size=size), label="piece"))
    threads, min_part = data.draw(st.integers(2, 8), label="threads"), data.draw(st.integers(1, 600), label="min_part")
    expected = core.merge_piece(piece, "queue")
    assert_ids(core.merge_piece(piece, "linear", threads=threads, min_part=min_part), expected, f"{piece[:40]!r}")


@pytest.mark.parametrize("name", MAIN)
def test_giant_piece_default_parts(name):
    """Pieces of 1 MB with the default part size (parts start at aligned offsets) on 2 to 8 threads, through
    encode_ordinary, encode and a batch of one text: tiktoken's ids."""
    tok, enc = native(name), tt(name)
    letters = "".join(random.Random(6).choices("abcdefghijklmnopqrstuvwxyz", k=1_000_000))
    for text in ["a" * 1_000_000, "\U0001f600" * 250_000, letters]:
        expected = enc.encode_ordinary(text)
        for threads in (2, 5, 8):
            assert_ids(tok._core.encode_ordinary(text, threads=threads), expected, f"{text[:8]!r}... {threads} threads")
        assert_ids(tok._core.encode(text, tok._policy("all", ()), threads=3), expected, f"{text[:8]!r}... encode")
        assert_ids(tok.encode_ordinary_batch([text], num_threads=4)[0], expected, f"{text[:8]!r}... batch of one")
        assert_ids(tok.encode_ordinary(text), expected, f"{text[:8]!r}... hardware threads")
    with pytest.raises(ValueError, match="threads"):
        tok._core.encode_ordinary("ab", threads=0)
    with pytest.raises(ValueError, match="min_part"):
        tok._core.merge_piece(b"ab", "linear", min_part=0)


# ==== one long text over threads ==============================================================================
# A text of 2 * min_part bytes or more in many pieces is encoded in groups of whole pieces, one per thread, joined
# in order (bpe_encode.cpp: encode_ordinary); a text that is mostly one giant piece cuts that piece instead.


@pytest.mark.parametrize("name", MAIN)
def test_long_text_groups_match_tiktoken(name):
    """Every corpus, text without spaces and a mix with a giant piece and specials-as-text, on 1 to 8 threads with
    groups down to a few hundred bytes: tiktoken's ids, through encode_ordinary, encode and the public num_threads."""
    from fastllm import _bpe

    require(*CORPUS_FILES)
    tok, enc = native(name), tt(name)
    core = tok._core
    rng = random.Random(8)
    texts = {f.name: corpus(f)[:60_000] for f in CORPUS_FILES}
    texts["no-spaces"] = corpus(CORPORA / "english_kjv.txt")[:60_000].replace(" ", "")
    texts["mixed"] = texts["english_kjv.txt"][:20_000] + "x" * 9_000 + "<|endoftext|>" + texts["no-spaces"][:20_000]
    # cut at the first space past half, one part then holds a piece longer than groups allow: the parts' pieces
    # go on as one text's (encode_pieces cuts the giant piece instead)
    texts["giant-then-words"] = (
        "".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=33_000)) + " " + texts["english_kjv.txt"][:27_000]
    )
    for kind, text in texts.items():
        expected = enc.encode_ordinary(text)
        pieces = _bpe.pretokenize(text, core.pattern)
        assert len(pieces) > 1000, kind
        for threads in (1, 2, 3, 8):
            min_part = rng.choice([300, 4096, 20_000])
            what = f"{name} {kind} threads={threads} min_part={min_part}"
            assert_ids(core.encode_ordinary(text, threads=threads, min_part=min_part), expected, what, enc.decode)
            got = core.encode(text, tok._policy((), ()), threads=threads, min_part=min_part)
            assert_ids(got, expected, what + " encode", enc.decode)
        assert_ids(tok.encode_ordinary(text, num_threads=2), expected, f"{name} {kind} num_threads=2", enc.decode)
        got = tok.encode(text, disallowed_special=(), num_threads=3)
        assert_ids(got, expected, f"{name} {kind} encode", enc.decode)
    with pytest.raises(ValueError, match="threads must be >= 1"):
        tok.encode_ordinary("ab", num_threads=0)


def test_text_parts_policy():
    """Groups only for texts of >= 2 parts with >= 64 pieces per group and no piece longer than a group."""
    from fastllm import _bpe

    threads = _bpe.piece_parts(10**9)  # the hardware's threads (at most 8)
    assert _bpe.text_parts(10**7, 100, 10**5) == threads
    assert _bpe.text_parts(100_000, 100, 10**4) == 1  # under 2 parts of 128 kB
    assert _bpe.text_parts(10**7, 9 * 10**6, 10**5) == 1  # mostly one giant piece: the piece is cut instead
    assert _bpe.text_parts(10**7, 100, 10) == 1  # few pieces


# ==== batches =================================================================================================


@pytest.mark.parametrize("threads", [None, 1, 2, 3, 100])
def test_encode_batch_threads(threads):
    tok = native("gpt2")
    require(*CORPUS_FILES)
    texts = [corpus_slice(p) for p in CORPUS_FILES] + ["", "x", " " * 1000, "<|endoftext|>"]
    expected = [tok.encode_ordinary(t) for t in texts]
    assert tok.encode_ordinary_batch(texts, num_threads=threads) == expected
    assert tok.encode_batch(texts, num_threads=threads, disallowed_special=set()) == expected
    assert tok.encode_batch(texts, num_threads=threads, allowed_special="all") == [
        tok.encode(t, allowed_special="all") for t in texts
    ]
    assert tok.encode_batch([], num_threads=threads) == []
    assert tok.encode_ordinary_batch(["", ""], num_threads=threads) == [[], []]
    assert tok.encode_batch(iter(["ab", "c"]), num_threads=threads) == [tok.encode("ab"), tok.encode("c")]


def test_empty_inputs():
    tok = native("gpt2")
    assert tok.encode("") == [] and tok.encode_ordinary("") == []
    assert tok.decode([]) == "" and tok.decode_bytes([]) == b""
    assert tok.encode_batch([]) == [] and tok.encode_ordinary_batch([]) == []


def test_decode_invalid_utf8_is_replaced():
    tok, enc = native("gpt2"), tt("gpt2")
    ids = enc.encode("é中😀")
    for cut in range(len(ids) + 1):
        part = ids[:cut] + [enc.encode_single_token(b" x")]
        assert tok.decode_bytes(part) == enc.decode_bytes(part)
        assert tok.decode(part) == enc.decode(part)  # errors="replace"
    lone = [enc.encode_single_token(bytes([0xE4]))]
    assert tok.decode(lone) == "\ufffd" and tok.decode_bytes(lone) == b"\xe4"


# ==== vocabulary ==============================================================================================


def test_vocabulary_matches_hf_and_tiktoken():
    tok, hf, enc = native("gpt2"), hf_gpt2(), tt("gpt2")
    assert tok.vocab_size == hf.get_vocab_size(with_added_tokens=True) == enc.n_vocab == 50257
    assert [tok.id_to_token(i) for i in range(tok.vocab_size)] == [hf.id_to_token(i) for i in range(tok.vocab_size)]
    for token, i in hf.get_vocab(with_added_tokens=True).items():
        assert tok.token_to_id(token) == i, token
    for i in range(enc.n_vocab - 1):
        assert tok.token_to_id(enc.decode_single_token_bytes(i)) == i
    assert tok.token_to_id("Ġthe") == tok.token_to_id(b" the") == enc.encode_single_token(b" the")
    assert tok.token_to_id(EOT) == 50256 and tok.id_to_token(50256) == EOT
    for unknown in ("ĠzzqxwĠyyqwv", "not a byte-level string \u4e2d", b"\xff\xfe\xfdzzqx"):
        assert tok.token_to_id(unknown) is None
    cl = native("cl100k")
    assert cl.vocab_size == tt("cl100k").n_vocab
    assert cl.token_to_id(b" the") == tt("cl100k").encode_single_token(b" the")


# ==== save ====================================================================================================


def test_save_writes_the_merges_bpe_makes(tmp_path):
    """A ranks vocabulary saves one merge per token BPE builds, the split BPE makes it with, by rank: what HF's own
    converter derives from tiktoken ranks, one entry per line."""
    require(GPT2_TIKTOKEN)
    tok = Tokenizer.from_tiktoken(GPT2_TIKTOKEN, pattern="gpt2")
    ranks = _bpe_py.load_tiktoken_ranks(GPT2_TIKTOKEN)
    token = {r: t for t, r in ranks.items()}
    merges = [(token[a], token[b]) for a, b in tok._core.merges()]
    assert merges == _bpe_py.merges_from_ranks(ranks)
    path = tmp_path / "gpt2.json"
    tok.save(path)
    text = path.read_text(encoding="utf-8")
    doc = json.loads(text)
    to_str = _bpe_py.token_bytes_to_str
    assert doc["model"]["merges"] == [[to_str(a), to_str(b)] for a, b in merges]
    assert doc["model"]["ignore_merges"] is True
    assert len(text.splitlines()) < len(ranks) + len(merges) + 100  # an entry per line
    assert Tokenizer.from_file(path).encode_ordinary(text[:20_000]) == tok.encode_ordinary(text[:20_000])


@pytest.mark.parametrize("name", MAIN)
def test_save_loads_in_hf_and_round_trips(name, tmp_path):
    require(*CORPUS_FILES)
    tok = native(name)
    path = tmp_path / f"{name}.json"
    tok.save(path)
    hf = HFTokenizer.from_file(str(path))
    reloaded = Tokenizer.from_file(path)
    assert reloaded.vocab_size == tok.vocab_size and reloaded.special_tokens == tok.special_tokens
    texts = [corpus_slice(p) for p in CORPUS_FILES] + [f"a {EOT} b", "12345678  \n\n x", "it's IT'S"]
    for text in texts:
        expected = tok.encode(text, allowed_special="all")
        assert_ids(hf_ids(hf, text), expected, "HF from_file(saved)", tok.decode)
        assert hf.decode(expected, skip_special_tokens=False) == text
        assert_ids(reloaded.encode(text, allowed_special="all"), expected, "Tokenizer.from_file(saved)", tok.decode)
    assert [reloaded.id_to_token(i) for i in range(0, 50000, 7)] == [tok.id_to_token(i) for i in range(0, 50000, 7)]
