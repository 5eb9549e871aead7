"""Differential tests of the built-in pre-tokenizers (csrc/pretokenize.cpp) against tiktoken 0.14.

Oracles, strongest first:
  * tiktoken itself. Full encodes with the gpt2 and cl100k vocabularies in ../shared/data must equal BPE over our
    pieces (o200k splits with its own pattern and encodes with cl100k's ranks, as no o200k vocabulary is offline).
    For the Unicode tables, tiktoken's regex engine is queried through a byte-level Encoding whose pattern is one
    class: bytes no match covers are dropped, so encode() returns exactly the code points in the class.
  * `regex.findall` with tiktoken's exact pattern strings. The `regex` module carries Unicode 17 tables, while
    tiktoken's Rust regex (and so fastllm) uses Unicode 16.0, so `oracle_split` first maps every code point whose
    classes differ between the two onto a stand-in with tiktoken's classes, then cuts the original text at the
    same code-point offsets.

HF tokenizers 0.23 (Oniguruma) was measured against tiktoken: the same Unicode 16.0 classes (\\s, \\p{L}, the five
L subcategories, \\p{M}, \\p{N}; see test_hf_tables_match_tiktoken), the same contraction case folding (U+017F
LONG S matches `(?i)s`, U+212A KELVIN SIGN matches `(?i)k`, no multi-character folds such as "'ß"), and the same
pieces for all three exact tiktoken patterns on the corpora and on the hypothesis alphabet (test_hf_agrees). So the
built-in names are also exact for HF Split pre-tokenizers that use these pattern strings verbatim; HF files often
carry non-possessive variants of the cl100k pattern, which are different regexes and go to the regex engine.

FASTLLM_MAX_EXAMPLES sets the hypothesis budget (default 300).
"""

import inspect
import os
from functools import lru_cache
from pathlib import Path

import pytest
import regex
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastllm._bpe import pretokenize, pretokenize_cut

SHARED = Path(os.environ.get("FASTLLM_SHARED", Path(__file__).resolve().parents[2] / "shared"))
CORPORA = sorted((SHARED / "corpora").glob("*.txt"))
MAX_EXAMPLES = int(os.environ.get("FASTLLM_MAX_EXAMPLES", 300))

# tiktoken 0.14's exact pattern strings (tiktoken_ext/openai_public.py); test_patterns_are_tiktokens checks them.
R50K_PAT = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
CL100K_PAT = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]"""
    r"""|\s+(?!\S)|\s"""
)
O200K_PARTS = [
    r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
    r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
    r"""\p{N}{1,3}""",
    r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
    r"""\s*[\r\n]+""",
    r"""\s+(?!\S)""",
    r"""\s+""",
]
O200K_PAT = "|".join(O200K_PARTS)
# The original GPT-2 pattern (HF ByteLevel uses it); equivalent to tiktoken's r50k rewrite.
GPT2_ORIGINAL_PAT = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
PATTERNS = {"gpt2": R50K_PAT, "cl100k": CL100K_PAT, "o200k": O200K_PAT}
NAMES = list(PATTERNS)

# The classes the three patterns test, as tiktoken's regex syntax spells them.
CLASSES = [r"\s", r"\p{Lu}", r"\p{Ll}", r"\p{Lt}", r"\p{Lm}", r"\p{Lo}", r"\p{M}", r"\p{N}"]
ALL_CHARS = "".join(chr(c) for c in range(0x110000) if not 0xD800 <= c < 0xE000)


# ==== Oracles ====


def tiktoken_class(cls: str) -> frozenset:
    """Code points that tiktoken's regex engine puts in `cls` (a byte-level Encoding drops unmatched bytes)."""
    tiktoken = pytest.importorskip("tiktoken")
    ranks = {bytes([b]): b for b in range(256)}
    enc = tiktoken.Encoding("class-probe", pat_str=cls, mergeable_ranks=ranks, special_tokens={})
    return frozenset(enc.decode_bytes(enc.encode_ordinary(ALL_CHARS)).decode("utf-8"))


@lru_cache(maxsize=None)
def tiktoken_classes() -> dict:
    return {cls: tiktoken_class(cls) for cls in CLASSES}


@lru_cache(maxsize=None)
def unicode16_stand_ins() -> dict:
    """str.translate table: code point whose `regex` classes differ from tiktoken's -> one whose agree and match."""
    tk = tiktoken_classes()
    re_sets = {cls: frozenset(regex.findall(cls, ALL_CHARS)) for cls in CLASSES}

    def signature(sets, ch):
        return tuple(ch in sets[cls] for cls in CLASSES)

    disputed = set().union(*(tk[cls] ^ re_sets[cls] for cls in CLASSES))
    # Stand-ins are non-ASCII and outside the case-folding orbits the patterns care about (U+017F, U+212A).
    by_signature = {}
    for ch in ALL_CHARS[0x80:0x3000]:
        if ch not in disputed and ch not in "\u017f\u212a":
            by_signature.setdefault(signature(re_sets, ch), ch)
    return {ord(ch): by_signature[signature(tk, ch)] for ch in disputed}


def oracle_split(text: str, name: str) -> list:
    """tiktoken's pieces of `text`, computed with `regex` on a Unicode-16-equivalent stand-in text."""
    stand_in = text.translate(unicode16_stand_ins())
    pieces, start = [], 0
    for piece in regex.findall(PATTERNS[name], stand_in):
        pieces.append(text[start : start + len(piece)])
        start += len(piece)
    assert start == len(text), "the built-in patterns cover every code point"
    return pieces


@lru_cache(maxsize=None)
def tiktoken_ranks(vocab: str) -> dict:
    from tiktoken.load import load_tiktoken_bpe

    path = SHARED / "data" / vocab
    if not path.exists():
        pytest.skip(f"{path} is absent (../shared/data is not checked out)")
    return load_tiktoken_bpe(str(path))


@lru_cache(maxsize=None)
def tiktoken_encoding(name: str):
    """tiktoken with pattern `name`. There is no o200k vocabulary offline, so o200k splits with its own pattern
    and encodes each piece with cl100k's ranks: the pieces still come from tiktoken's regex engine."""
    tiktoken = pytest.importorskip("tiktoken")
    ranks = tiktoken_ranks("gpt2/gpt2.tiktoken" if name == "gpt2" else "cl100k/cl100k_base.tiktoken")
    return tiktoken.Encoding(name, pat_str=PATTERNS[name], mergeable_ranks=ranks, special_tokens={})


def assert_same_ids(text: str, name: str) -> None:
    """tiktoken's ids for `text` equal BPE over our pieces (a moved boundary almost always changes the ids)."""
    enc = tiktoken_encoding(name)
    ours = [i for piece in pretokenize(text, name) for i in enc._encode_single_piece(piece)]
    assert ours == enc.encode_ordinary(text)


def assert_same_split(text: str, name: str) -> None:
    ours, expected = pretokenize(text, name), oracle_split(text, name)
    if ours != expected:
        for k, (a, b) in enumerate(zip(ours, expected)):
            if a != b:
                raise AssertionError(f"{name}: piece {k} is {a!r}, expected {b!r}; text {text!r}")
        raise AssertionError(f"{name}: {len(ours)} pieces, expected {len(expected)}; text {text!r}")


# ==== Patterns and tables ====


def test_patterns_are_tiktokens():
    openai_public = pytest.importorskip("tiktoken_ext.openai_public")
    assert openai_public.r50k_pat_str == R50K_PAT
    source = inspect.getsource(openai_public)
    assert f'r"""{CL100K_PAT}"""' in source
    for part in O200K_PARTS:
        assert f'r"""{part}"""' in source


def test_tables_match_tiktoken():
    """Every code point of Unicode's planes classified as tiktoken does, as far as any pattern can tell."""
    tk = tiktoken_classes()
    # A run of code points with one set of classes is one piece under gpt2 unless a member is misclassified between
    # \p{L}, \p{N}, \s and the rest; under o200k it also breaks on letter subclass errors. One run per class set.
    runs = {}
    for c in ALL_CHARS:
        runs.setdefault(tuple(c in tk[cls] for cls in CLASSES), []).append(c)
    for run in runs.values():
        for name in NAMES:
            assert pretokenize("".join(run), name) == oracle_split("".join(run), name), name
    # In runs o200k cannot tell Lu/Lt from Ll from Lm/Lo/M from unclassified; these contexts can. Planes 4-13
    # and 15-16 hold no assigned character but private use, so they are sampled.
    chars = [c for c in ALL_CHARS if ord(c) < 0x40000 or 0xE0000 <= ord(c) < 0xE1000 or ord(c) % 97 == 0]
    text = "".join(f"A{c}A1A{c}Aa" for c in chars)
    assert pretokenize(text, "o200k") == oracle_split(text, "o200k")


def test_contraction_case_folding_matches_tiktoken():
    folds = {letter: tiktoken_class(f"(?i:{letter})") for letter in "sdmtlvrek"}
    assert folds["s"] == set("sS\u017f") and folds["k"] == set("kK\u212a")
    for letter in "dmtlvre":
        assert folds[letter] == {letter, letter.upper()}
    for name in NAMES:
        for ending in [
            "s",
            "S",
            "\u017f",
            "t",
            "T",
            "d",
            "m",
            "ll",
            "LL",
            "lL",
            "ve",
            "VE",
            "re",
            "rE",
            "\u212a",
            "\u00df",
            "\ufb06",
            "l",
            "v",
            "r",
        ]:
            for text in [f"'{ending}", f"x'{ending}", f"X'{ending} ", f"'{ending}x", f" '{ending}'s"]:
                assert_same_split(text, name)


# ==== Known splits ====

KNOWN = {
    "gpt2": [
        ("Hello world", ["Hello", " world"]),
        (
            "I'm don't it's we'll you've they're he'd",
            ["I", "'m", " don", "'t", " it", "'s", " we", "'ll", " you", "'ve", " they", "'re", " he", "'d"],
        ),
        ("IT'S", ["IT", "'", "S"]),
        ("a  b", ["a", " ", " b"]),
        ("a\t\x0b\x0c b", ["a", "\t\x0b\x0c", " b"]),
        ("a\n\n b", ["a", "\n\n", " b"]),
        ("a \r\n", ["a", " \r\n"]),
        ("x1234567 ", ["x", "1234567", " "]),
        ("\x1c\x1d", ["\x1c\x1d"]),
    ],
    "cl100k": [
        ("Hello world", ["Hello", " world"]),
        ("IT'S I'M", ["IT", "'S", " I", "'M"]),
        ("'\u017f", ["'\u017f"]),
        ("1234567", ["123", "456", "7"]),
        ("a\t\x0b\x0c b", ["a", "\t\x0b\x0c", " b"]),
        ("\tword", ["\tword"]),
        ("a \n\n b", ["a", " \n\n", " b"]),
        ("a\r\n\r\n", ["a", "\r\n\r\n"]),
        ("a \n  ", ["a", " \n  "]),
        ("x!!\n\ny", ["x", "!!\n\n", "y"]),
        (" 123", [" ", "123"]),
        ("\x1c\x1f", ["\x1c\x1f"]),
        ("\x1cword", ["\x1cword"]),
        ("\rword\nword", ["\r", "word", "\n", "word"]),
    ],
    "o200k": [
        ("Hello world", ["Hello", " world"]),
        ("don't DON'T Don'T", ["don't", " DON'T", " Don'T"]),
        ("HTTPServer", ["HTTPServer"]),
        ("1234567", ["123", "456", "7"]),
        ("a \n  ", ["a", " \n", "  "]),
        ("a\t\x0b\x0c b", ["a", "\t\x0b\x0c", " b"]),
        ("x//\n/y", ["x", "//\n/", "y"]),
        ("\u0301AB", ["\u0301", "AB"]),
        ("!\u0301", ["!\u0301"]),
        ("A\u02b0A1", ["A\u02b0", "A", "1"]),
        ("\rword\nWORD", ["\r", "word", "\n", "WORD"]),
    ],
}


@pytest.mark.parametrize("name, text, pieces", [(n, t, p) for n, cases in KNOWN.items() for t, p in cases])
def test_known_splits(name, text, pieces):
    assert pretokenize(text, name) == pieces
    assert oracle_split(text, name) == pieces


@pytest.mark.parametrize("name", ["r50k", "p50k"])
def test_aliases(name):
    text = "Hello, world's  \n 12345 \u00e9t\u00e9"
    assert pretokenize(text, name) == pretokenize(text, "gpt2")


@pytest.mark.parametrize("name", NAMES)
def test_empty(name):
    assert pretokenize("", name) == []


def test_original_gpt2_pattern_is_equivalent():
    text = "".join(f"a{c} {c}  {c}\n" for c in " \t\n\x0b'sx1!\u00a0\u3000") + "trailing  \n "
    assert regex.findall(GPT2_ORIGINAL_PAT, text) == regex.findall(R50K_PAT, text)


# ==== Property tests ====

SPACES = "\t\x0b\x0c\r\n \x85\xa0\u1680\u2000\u2001\u2005\u200a\u2028\u2029\u202f\u205f\u3000"
NOT_SPACES = "\x1c\x1d\x1e\x1f\x00\x7f\u200b\u180e\ufeff"
LETTERS = "aAzZ\u00e0\u00c0\u03c9\u03a9\u0436\u0416\u01c5\u01c8\u1ffc\u02b0\u02bc\u3005\u30fc\u00aa\u3042\u4e2d\u05d0"
MARKS = "\u0301\u0308\u0903\u20dd\u0e31\u302a"
NUMBERS = "0123456789\u0663\u096a\u2160\u216b\u00bd\u00b2\U0001d7ce"
OTHER = '!.,;:/\\-_()[]{}"#@$%^&*+=<>?|`~\u00a7\u2014\u2026\U0001f600\U0001f44d\U0001f3fd\u200d\u2764\ufe0f'
CONTRACTIONS = [
    "'s",
    "'t",
    "'re",
    "'ve",
    "'m",
    "'ll",
    "'d",
    "'S",
    "'T",
    "'RE",
    "'Ve",
    "'M",
    "'LL",
    "'lL",
    "'D",
    "'\u017f",
    "'\u212a",
    "'",
    "''",
    "n't",
    "N'T",
]
FRAGMENTS = [
    "\r\n",
    "  ",
    "   ",
    " \n ",
    "\n\n",
    "123456",
    "Hello",
    "HTTPServer",
    "\u4e2d\u6587\u5b57",
    "e\u0301",
    "\U0001f468\u200d\U0001f469\u200d\U0001f467",
]

atoms = st.one_of(
    st.sampled_from(SPACES),
    st.sampled_from(NOT_SPACES),
    st.sampled_from(LETTERS),
    st.sampled_from(MARKS),
    st.sampled_from(NUMBERS),
    st.sampled_from(OTHER),
    st.sampled_from(CONTRACTIONS),
    st.sampled_from(FRAGMENTS),
    st.characters(exclude_categories=["Cs"]),
)
texts = st.lists(atoms, max_size=40).map("".join)
random_texts = st.text(st.characters(exclude_categories=["Cs"]), max_size=60)
hypothesis_settings = settings(max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize("name", NAMES)
@hypothesis_settings
@given(text=texts)
def test_matches_oracle(name, text):
    assert_same_split(text, name)


@pytest.mark.parametrize("name", NAMES)
@hypothesis_settings
@given(text=random_texts)
def test_matches_oracle_random_unicode(name, text):
    assert_same_split(text, name)


@pytest.mark.parametrize("name", NAMES)
@hypothesis_settings
@given(text=texts)
def test_matches_tiktoken_ids(name, text):
    assert_same_ids(text, name)


@pytest.mark.parametrize("name", NAMES)
@hypothesis_settings
@given(text=texts)
def test_pieces_cover_text(name, text):
    pieces = pretokenize(text, name)
    assert "".join(pieces) == text and all(pieces)


def assert_separates(text: str, name: str, start: int) -> int:
    """The cut found from byte `start` splits `text` into halves whose oracle pieces are the text's."""
    raw = text.encode()
    cut = pretokenize_cut(text, name, start)
    assert start <= cut <= len(raw)
    if cut < len(raw):
        k = len(raw[:cut].decode())
        assert oracle_split(text, name) == oracle_split(text[:k], name) + oracle_split(text[k:], name), (text, k)
    return cut


@pytest.mark.parametrize("name", NAMES)
@hypothesis_settings
@given(text=texts, data=st.data())
def test_cuts_separate_pieces(name, text, data):
    """A long text is pre-tokenized in parts on threads, cut where Pretokenizer::cut_at_or_after says."""
    assert_separates(text, name, data.draw(st.integers(0, len(text.encode())), label="start"))


@pytest.mark.parametrize("name", NAMES)
def test_cuts_separate_pieces_at_letters_and_marks(name):
    texts = [
        "ab cd",
        "a b",
        " a b ",
        "é ü",
        "x\u0301 y",
        "x \u0301y",
        "ab 12",
        "12 ab",
        "ab\u00a0cd",
        "a  b",
        "it's x",
        "x 's",
        "Hello World",
        "\u4e2d \u6587",
        "a\n b",
        "a \nb",
        "\U0001d400 \U0001d401",
        "end.Next",
        "end. Next",
        "x\u0301.y",
        "a,b;c:d!e?f",
        "it's.x",
        "don't.",
        "x.'s",
        "d..N",
        "1:1In",
        "\u4e2d\uff0c\u6587",
        "\u0416.\u0416",
    ]
    found = 0
    for text in texts:
        for start in range(len(text.encode()) + 1):
            found += assert_separates(text, name, start) < len(text.encode())
    assert found > 10
    assert pretokenize_cut("ab cd", name, 0) == 2
    assert pretokenize_cut("ab cd ef", name, 3) == 5
    assert pretokenize_cut("ab cd ef", name, 0, 3) == 2
    assert pretokenize_cut("ab cd ef", name, 0, 2) == pretokenize_cut("ab cd ef", name, 3, 5) == 8  # none before `to`
    assert pretokenize_cut("", name, 0) == 0
    assert pretokenize_cut("ab cd", r"\S+|\s+", 0) == 5  # a regex pattern knows of no cut


# ==== Corpora ====


def corpus_params():
    if not CORPORA:
        reason = f"no corpora under {SHARED / 'corpora'} (../shared is not checked out)"
        return [pytest.param(None, marks=pytest.mark.skip(reason=reason))]
    return [pytest.param(path, id=path.stem) for path in CORPORA]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("path", corpus_params())
def test_corpus_matches_oracle(path, name):
    text = path.read_text(encoding="utf-8")
    assert pretokenize(text, name) == oracle_split(text, name)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("path", corpus_params())
def test_corpus_cuts_separate_pieces(path, name):
    text = path.read_text(encoding="utf-8")
    raw = text.encode()
    cuts = 0
    for start in range(0, len(raw), len(raw) // 40):
        cut = pretokenize_cut(text, name, start)
        if cut == len(raw):
            continue
        cuts += 1
        k = len(raw[:cut].decode())
        window = text[max(0, k - 3000) : k + 3000]  # the pieces near the cut, from a text that has the same cut
        j = k - max(0, k - 3000)
        assert oracle_split(window, name) == oracle_split(window[:j], name) + oracle_split(window[j:], name)
    assert cuts > 0 or "zh" in path.name


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("path", corpus_params())
def test_corpus_matches_tiktoken_ids(path, name):
    text = path.read_text(encoding="utf-8")[:200_000]
    assert_same_ids(text, name)


# ==== HF tokenizers (Oniguruma) ====


def hf_split(text: str, pattern: str) -> list:
    tokenizers = pytest.importorskip("tokenizers")
    split = tokenizers.pre_tokenizers.Split(tokenizers.Regex(pattern), behavior="isolated")
    return [piece for piece, _ in split.pre_tokenize_str(text)]


def test_hf_tables_match_tiktoken():
    tokenizers = pytest.importorskip("tokenizers")
    tk = tiktoken_classes()
    # Planes 0-3 and 14: every assigned character (the rest is unassigned or private use in both).
    chars = "".join(c for c in ALL_CHARS if ord(c) < 0x40000 or 0xE0000 <= ord(c) < 0xE1000)
    for cls in CLASSES:
        removed = tokenizers.pre_tokenizers.Split(tokenizers.Regex(cls), behavior="removed")
        kept = set()
        for start in range(0, len(chars), 1 << 16):
            for piece, _ in removed.pre_tokenize_str(chars[start : start + (1 << 16)]):
                kept.update(piece)
        assert set(chars) - kept == tk[cls] & set(chars), cls


def hf_pattern(name: str) -> str:
    """tiktoken's pattern as Oniguruma must be given it to match the same pieces."""
    # Oniguruma reads `{n,m}+` as `(?:{n,m})+`, a repeated interval (Ruby syntax), not as possessive: tiktoken's
    # cl100k pattern verbatim in an HF Split puts a whole digit run in one piece. An atomic group is the spelling
    # both engines read the same way.
    return PATTERNS[name].replace(r"\p{N}{1,3}+", r"(?>\p{N}{1,3})")


def test_hf_reads_possessive_interval_differently():
    assert hf_split("1234567", CL100K_PAT) == ["1234567"]
    assert hf_split("1234567", hf_pattern("cl100k")) == pretokenize("1234567", "cl100k") == ["123", "456", "7"]


@pytest.mark.parametrize("name", NAMES)
def test_hf_agrees(name):
    alphabet = SPACES + NOT_SPACES + LETTERS + MARKS + NUMBERS + OTHER + "".join(CONTRACTIONS + FRAGMENTS)
    text = "".join(f"{a}{b}" for a in alphabet for b in alphabet[::7])
    assert hf_split(text, hf_pattern(name)) == pretokenize(text, name)
    if CORPORA:
        corpus = CORPORA[0].read_text(encoding="utf-8")[:100_000]
        assert hf_split(corpus, hf_pattern(name)) == pretokenize(corpus, name)
