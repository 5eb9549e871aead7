"""A readable pure-Python byte-level BPE: the test oracle for fastllm's C++ tokenizer (`fastllm._bpe`).

This module is for reading and for checking the native code, never a production path (it is ~100x slower).
Encoding a string takes three steps:

1. Pre-tokenize: split the text into pieces with a regex (`PATTERNS`, run by the `regex` module, which supports the
   possessive quantifiers the tiktoken patterns use). BPE never merges across a piece boundary.
2. Byte-pair merge each piece's UTF-8 bytes, starting from single bytes, with one of two rules:
   * **ranks** (tiktoken): `ranks: dict[bytes, int]` maps the bytes of every token to its rank, which is also its id.
     A piece that is itself a token is returned at once. Otherwise, repeatedly merge the adjacent pair of parts
     whose concatenation has the lowest rank (leftmost on ties) until no adjacent concatenation is a token.
   * **merges** (Hugging Face `tokenizers`, original GPT-2): an ordered list of pairs `(left, right)`; a pair's
     priority is its index in the list. Repeatedly merge the adjacent pair with the lowest priority (leftmost on
     ties) until no adjacent pair is listed; each final part is looked up in the vocabulary.
   For the GPT-2 files both rules give the same ids (`merges_from_ranks` derives one from the other).
3. Map the parts to ids.

Special tokens (`<|endoftext|>`) follow tiktoken's policy: text matching an *allowed* special becomes its id; text
matching a *disallowed* one raises ValueError; `encode_ordinary` treats all of them as plain text.

Hugging Face files store token bytes as printable strings (the GPT-2 "byte-level" alphabet, `bytes_to_unicode`):
the space byte 0x20 is written "Ġ", so the token b" the" appears as "Ġthe" in encoder.json / vocab.bpe.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Collection, Iterable
from functools import lru_cache
from pathlib import Path

import regex

# The pre-tokenizer patterns, exactly as in tiktoken_ext.openai_public (tiktoken 0.14); the test suite checks they
# still equal tiktoken's. GPT-2's original pattern was
#   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
# and r50k_pat_str is an equivalent, faster spelling of it.
_R50K = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
_CL100K = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|"""
    r"""\s+(?!\S)|\s"""
)
_O200K = "|".join(
    [
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""\p{N}{1,3}""",
        r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
        r"""\s*[\r\n]+""",
        r"""\s+(?!\S)""",
        r"""\s+""",
    ]
)
PATTERNS: dict[str, str] = {"gpt2": _R50K, "r50k": _R50K, "p50k": _R50K, "cl100k": _CL100K, "o200k": _O200K}


@lru_cache(maxsize=None)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte-level alphabet: byte value (0..255) -> one printable character.

    Bytes that are already printable and not whitespace ('!'..'~', '¡'..'¬', '®'..'ÿ') stand for themselves; the other
    68 bytes (controls, space, 0x7F..0xA0, soft hyphen 0xAD) take the code points 256, 257, ... in byte order, so
    0x20 -> 'Ġ' (U+0120) and 0x0A -> 'Ċ' (U+010A).
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


@lru_cache(maxsize=None)
def _unicode_to_byte() -> dict[str, int]:
    return {c: b for b, c in bytes_to_unicode().items()}


def token_str_to_bytes(token: str) -> bytes:
    """'Ġthe' -> b' the'. Raises KeyError for a character outside the byte-level alphabet."""
    table = _unicode_to_byte()
    return bytes(table[c] for c in token)


def token_bytes_to_str(token: bytes) -> str:
    """b' the' -> 'Ġthe'."""
    table = bytes_to_unicode()
    return "".join(table[b] for b in token)


def fix_surrogates(text: str) -> str:
    """What tiktoken does to a str that UTF-8 cannot encode: round-trip it through UTF-16.

    A high surrogate followed by a low one becomes the character they spell ('\\ud83d\\ude00' -> '😀'); every other
    lone surrogate becomes U+FFFD.
    """
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def merge_pieces(piece: bytes, pair_rank: Callable[[bytes, bytes], int | None]) -> list[bytes]:
    """Byte-pair merge one piece: start from single bytes, merge the best-ranked adjacent pair until none is left.

    `pair_rank(left, right)` is the priority of merging two adjacent parts (lower merges first) or None when they
    cannot merge. Ties go to the leftmost pair. Returns the final parts; their concatenation is `piece`.
    O(len(piece)^2): fine for an oracle.
    """
    parts = [piece[i : i + 1] for i in range(len(piece))]
    while len(parts) > 1:
        best, best_rank = -1, None
        for i in range(len(parts) - 1):
            rank = pair_rank(parts[i], parts[i + 1])
            if rank is not None and (best_rank is None or rank < best_rank):
                best, best_rank = i, rank
        if best_rank is None:
            break
        parts[best : best + 2] = [parts[best] + parts[best + 1]]
    return parts


def merges_from_ranks(ranks: dict[bytes, int]) -> list[tuple[bytes, bytes]]:
    """Derive an HF-style merges list from tiktoken ranks (how HF converts tiktoken vocabularies).

    For every token of two or more bytes, in rank order, run rank-BPE on its bytes using only tokens of lower rank;
    this ends in exactly two parts, and that pair is the token's merge. Tokens that BPE cannot build from two
    lower-ranked tokens get no merge (they are reachable only through the ranks rule's whole-piece shortcut).
    """
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(token) < 2:
            continue
        parts = merge_pieces(token, lambda a, b: r if (r := ranks.get(a + b)) is not None and r < rank else None)
        if len(parts) == 2:
            merges.append((parts[0], parts[1]))
    return merges


def load_tiktoken_ranks(path: str | Path) -> dict[bytes, int]:
    """Read a .tiktoken file: one `<base64 token bytes> <rank>` per line -> {token bytes: rank}."""
    ranks = {}
    for lineno, line in enumerate(Path(path).read_bytes().splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split()
        if len(fields) != 2:
            raise ValueError(f"{path}:{lineno}: expected '<base64> <rank>', got {line[:80]!r}")
        ranks[base64.b64decode(fields[0], validate=True)] = int(fields[1])
    return ranks


def load_vocab_merges(vocab_json: str | Path, merges_txt: str | Path) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Read encoder.json/vocab.json ({byte-level token str: id}) and vocab.bpe/merges.txt ('left right' a line,
    after an optional '#version' header) -> (vocab, merges) in byte-level str form."""
    vocab = json.loads(Path(vocab_json).read_text(encoding="utf-8"))
    merges = []
    for line in Path(merges_txt).read_text(encoding="utf-8").splitlines():
        if line.startswith("#version") or not line.strip():
            continue
        left, right = line.split(" ")
        merges.append((left, right))
    return vocab, merges


class PyBPE:
    """A byte-level BPE tokenizer in plain Python.

    Build it with `from_ranks` (tiktoken rule) or `from_vocab_merges` (HF rule); see the module docstring.
    Data held:
      decoder: dict[int, bytes]             id -> token bytes, for every ordinary token
      pattern: str                           pre-tokenizer regex source
      special_tokens: dict[str, int]         special token text -> id
      ranks: dict[bytes, int] | None          tiktoken rule: token bytes -> rank (= id)
      merge_priority: dict[(bytes, bytes), int] | None   HF rule: pair -> index in the merges list
      encoder: dict[bytes, int]              token bytes -> id (HF rule: the vocabulary)
    """

    def __init__(
        self,
        *,
        encoder: dict[bytes, int],
        pattern: str,
        special_tokens: dict[str, int] | None,
        ranks: dict[bytes, int] | None = None,
        merge_priority: dict[tuple[bytes, bytes], int] | None = None,
    ):
        assert (ranks is None) != (merge_priority is None), "exactly one merge rule"
        self.encoder = encoder
        self.decoder = {i: b for b, i in encoder.items()}
        self.pattern = PATTERNS.get(pattern, pattern)
        self._regex = regex.compile(self.pattern)
        self.special_tokens = dict(special_tokens or {})
        self.ranks = ranks
        self.merge_priority = merge_priority

    @classmethod
    def from_ranks(
        cls, ranks: dict[bytes, int], pattern: str = "gpt2", special_tokens: dict[str, int] | None = None
    ) -> PyBPE:
        """tiktoken rule. `ranks`: {token bytes: rank}; `pattern`: a name in PATTERNS or a regex."""
        return cls(encoder=dict(ranks), pattern=pattern, special_tokens=special_tokens, ranks=dict(ranks))

    @classmethod
    def from_tiktoken_file(cls, path: str | Path, pattern: str = "gpt2", special_tokens=None) -> PyBPE:
        return cls.from_ranks(load_tiktoken_ranks(path), pattern, special_tokens)

    @classmethod
    def from_vocab_merges(
        cls,
        vocab: dict[str, int],
        merges: Iterable[tuple[str, str]],
        pattern: str = "gpt2",
        special_tokens: dict[str, int] | None = None,
    ) -> PyBPE:
        """HF rule. `vocab`: {byte-level token str ('Ġthe'): id}; `merges`: [('Ġ', 't'), ...] in priority order.

        Entries of `vocab` that are listed in `special_tokens` are specials, not byte-level tokens.
        """
        special_tokens = dict(special_tokens or {})
        encoder = {token_str_to_bytes(s): i for s, i in vocab.items() if s not in special_tokens}
        priority = {}
        for index, (left, right) in enumerate(merges):
            priority.setdefault((token_str_to_bytes(left), token_str_to_bytes(right)), index)
        return cls(encoder=encoder, pattern=pattern, special_tokens=special_tokens, merge_priority=priority)

    @classmethod
    def from_files(cls, vocab_json, merges_txt, pattern: str = "gpt2", special_tokens=None) -> PyBPE:
        """From encoder.json + vocab.bpe. A special token already in the vocabulary keeps its id there."""
        vocab, merges = load_vocab_merges(vocab_json, merges_txt)
        return cls.from_vocab_merges(vocab, merges, pattern, special_tokens)

    # -- encoding ---------------------------------------------------------------------------------------------

    def pretokenize(self, text: str) -> list[str]:
        """Split text into the pieces BPE encodes independently (regex find-all)."""
        return [m.group() for m in self._regex.finditer(text)]

    def encode_piece(self, piece: bytes) -> list[int]:
        """BPE one pre-tokenized piece (UTF-8 bytes) -> ids."""
        if self.ranks is not None:
            if piece in self.ranks:  # tiktoken shortcut: a piece that is a token is never split
                return [self.ranks[piece]]
            ranks = self.ranks
            parts = merge_pieces(piece, lambda a, b: ranks.get(a + b))
        else:
            priority = self.merge_priority
            parts = merge_pieces(piece, lambda a, b: priority.get((a, b)))
        return [self.encoder[p] for p in parts]

    def encode_ordinary(self, text: str) -> list[int]:
        """Encode text, treating special-token text as ordinary text."""
        ids = []
        for piece in self.pretokenize(fix_surrogates(text)):
            ids.extend(self.encode_piece(piece.encode("utf-8")))
        return ids

    def encode(
        self,
        text: str,
        *,
        allowed_special: Collection[str] | str = frozenset(),
        disallowed_special: Collection[str] | str = "all",
    ) -> list[int]:
        """Encode text with tiktoken's special-token policy.

        allowed_special: specials to emit as their id ("all" = every one). disallowed_special: specials whose text
        raises ValueError ("all" = every special not allowed); specials in neither set are encoded as plain text.
        """
        allowed = set(self.special_tokens) if allowed_special == "all" else set(allowed_special)
        disallowed = set(self.special_tokens) - allowed if disallowed_special == "all" else set(disallowed_special)
        for special in disallowed:
            if special in text:
                raise ValueError(f"Encountered text corresponding to disallowed special token {special!r}")
        text = fix_surrogates(text)
        if not allowed:
            return self.encode_ordinary(text)
        # Longest first, so that of two specials starting at one position the longer wins.
        splitter = regex.compile("|".join(regex.escape(s) for s in sorted(allowed, key=len, reverse=True)))
        ids, start = [], 0
        for m in splitter.finditer(text):
            ids.extend(self.encode_ordinary(text[start : m.start()]))
            ids.append(self.special_tokens[m.group()])
            start = m.end()
        ids.extend(self.encode_ordinary(text[start:]))
        return ids

    # -- decoding ---------------------------------------------------------------------------------------------

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """ids -> the exact bytes they stand for. Raises KeyError for an unknown id."""
        special_bytes = {i: s.encode("utf-8") for s, i in self.special_tokens.items()}
        return b"".join(special_bytes[i] if i in special_bytes else self.decoder[i] for i in ids)

    def decode(self, ids: Iterable[int]) -> str:
        """ids -> str; bytes that are not valid UTF-8 become U+FFFD."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")
