"""Byte-level BPE tokenizer backed by the C++ core `fastllm._bpe`.

Ids are byte-exact with tiktoken and Hugging Face `tokenizers` for the same vocabulary. The C++ core
does the work (pre-tokenization, merging, decoding, threads); this wrapper owns file formats, the
special-token policy and argument checking.

    >>> tok = Tokenizer.gpt2()
    >>> tok.encode("hello world")
    [31373, 995]
    >>> tok.decode([31373, 995])
    'hello world'
"""

from __future__ import annotations

import functools
import os
from collections.abc import Collection, Iterable
from typing import Literal

from fastllm import _bpe

__all__ = ["Tokenizer", "PATTERNS", "train_bpe"]

ASSETS = os.path.join(os.path.dirname(__file__), "assets")

# Pre-tokenization patterns with a hand-written C++ scanner, written here as the regexes they
# reproduce exactly. These are the forms Hugging Face tokenizer.json files use (no possessive
# quantifiers: Oniguruma reads `{1,3}+` as a nested repeat); tiktoken's possessive spellings are
# equivalent.
PATTERNS = {
    "gpt2": r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""",
    "cl100k": r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+""",
    "o200k": "|".join(
        [
            r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
            r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
            r"""\p{N}{1,3}""",
            r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
            r"""\s*[\r\n]+""",
            r"""\s+(?!\S)""",
            r"""\s+""",
        ]
    ),
}
_ALIASES = {
    "r50k": "gpt2",
    "p50k": "gpt2",
    "r50k_base": "gpt2",
    "p50k_base": "gpt2",
    "cl100k_base": "cl100k",
    "o200k_base": "o200k",
}
# tiktoken's spellings of the same patterns (what a user copying them from tiktoken_ext passes).
_TIKTOKEN_SPELLINGS = {
    r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s""": "gpt2",
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]"""
    r"""|\s+(?!\S)|\s""": "cl100k",
}
_BUILTIN_OF_REGEX = {regex: name for name, regex in PATTERNS.items()} | _TIKTOKEN_SPELLINGS

# The special tokens of OpenAI's encodings, used when a .tiktoken file is loaded without any.
_ENDOFTEXT, _ENDOFPROMPT = "<|endoftext|>", "<|endofprompt|>"
_FIM = {"<|fim_prefix|>": 100258, "<|fim_middle|>": 100259, "<|fim_suffix|>": 100260}
_DEFAULT_SPECIALS = {
    "gpt2": {_ENDOFTEXT: 50256},
    "cl100k": {_ENDOFTEXT: 100257, **_FIM, _ENDOFPROMPT: 100276},
    "o200k": {_ENDOFTEXT: 199999, _ENDOFPROMPT: 200018},
}

_POLICY_DISALLOWED, _POLICY_ALLOWED, _POLICY_AS_TEXT = 0, 1, 2


@functools.lru_cache(maxsize=None)
def _byte_alphabet() -> tuple[dict[int, str], dict[str, int]]:
    to_char = {b: _bpe.byte_to_unicode(b) for b in range(256)}
    return to_char, {c: b for b, c in to_char.items()}


def _to_bytelevel(token: bytes) -> str:
    to_char = _byte_alphabet()[0]
    return "".join(to_char[b] for b in token)


def _from_bytelevel(token: str) -> bytes | None:
    from_char = _byte_alphabet()[1]
    try:
        return bytes(from_char[c] for c in token)
    except KeyError:
        return None


def _canonical_pattern(pattern: str) -> str:
    if not isinstance(pattern, str) or not pattern:
        raise ValueError(f"pattern must be a built-in name ({', '.join(PATTERNS)}) or a regex, got {pattern!r}")
    pattern = _ALIASES.get(pattern, pattern)
    return _BUILTIN_OF_REGEX.get(pattern, pattern)


def _specials_list(special_tokens: dict[str, int] | None) -> list[tuple[str, int, bool]]:
    if special_tokens is None:
        return []
    if not isinstance(special_tokens, dict):
        raise TypeError(f"special_tokens must be a dict of str to int, got {type(special_tokens).__name__}")
    out = []
    for text, i in special_tokens.items():
        if not isinstance(text, str) or not text or not isinstance(i, int) or isinstance(i, bool) or i < 0:
            raise ValueError(f"special token {text!r}: {i!r} must be a non-empty str mapped to a non-negative int id")
        out.append((text, i, True))
    return out


def _wrap_errors(path: str, fn, *args):
    """Calls a C++ loader; makes sure every error names the file."""
    try:
        return fn(*args)
    except ValueError as e:
        msg = str(e)
        raise ValueError(msg if path in msg else f"{path}: {msg}") from None


class Tokenizer:
    """A byte-level BPE tokenizer. Build one with a `from_*` constructor or `Tokenizer.gpt2()`."""

    def __init__(self, core: _bpe.CoreBPE, *, name: str = "bpe"):
        self._core = core
        self.name = name
        self._special_tokens = {text: i for text, i, special in core.specials if special}
        self._added_tokens = {text: i for text, i, special in core.specials if not special}
        self._default_policy = bytes([_POLICY_DISALLOWED if s else _POLICY_ALLOWED for _, _, s in core.specials])

    def __repr__(self) -> str:
        return f"Tokenizer(name={self.name!r}, vocab_size={self.vocab_size}, pattern={self.pattern!r})"

    # ==== Constructors ====

    @classmethod
    def from_tiktoken(
        cls, path: str | os.PathLike, pattern: str = "gpt2", special_tokens: dict[str, int] | None = None
    ) -> Tokenizer:
        """Loads a tiktoken `.tiktoken` rank file (`<base64 token> <rank>` per line).

        Args:
            pattern: "gpt2" (= "r50k", "p50k"), "cl100k", "o200k", or any regex.
            special_tokens: text -> id. Defaults to OpenAI's specials for the built-in patterns.
        """
        path = os.fspath(path)
        pattern = _canonical_pattern(pattern)
        if special_tokens is None:
            special_tokens = _DEFAULT_SPECIALS.get(pattern, {})
        core = _wrap_errors(path, _bpe.CoreBPE.from_tiktoken_file, path, _specials_list(special_tokens), pattern)
        return cls(core, name=os.path.basename(path))

    @classmethod
    def from_vocab_merges(
        cls,
        vocab: str | os.PathLike,
        merges: str | os.PathLike,
        *,
        special_tokens: dict[str, int] | None = None,
        pattern: str = "gpt2",
    ):
        """Loads GPT-2 style files: `encoder.json`/`vocab.json` (byte-level token -> id) and
        `vocab.bpe`/`merges.txt` (one merge per line, highest priority first).

        `special_tokens` defaults to `<|endoftext|>` when the vocabulary has it.
        """
        vocab, merges = os.fspath(vocab), os.fspath(merges)
        pattern = _canonical_pattern(pattern)
        specials = _specials_list(special_tokens)
        core = _wrap_errors(
            vocab, _bpe.CoreBPE.from_gpt2_files, vocab, merges, specials, pattern, special_tokens is None
        )
        return cls(core, name=os.path.basename(vocab))

    @classmethod
    def gpt2(cls) -> Tokenizer:
        """GPT-2's tokenizer (50257 ids, `<|endoftext|>` = 50256) from the vocabulary shipped in the package."""
        return cls(_gpt2_core(), name="gpt2")

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> Tokenizer:
        """Loads a Hugging Face `tokenizer.json` with a byte-level BPE model and its `added_tokens`."""
        from fastllm._tokenizer_json import read_tokenizer_json

        path = os.fspath(path)
        doc, specials, pattern, ignore_merges = read_tokenizer_json(path)
        pattern = _canonical_pattern(pattern)
        core = _wrap_errors(path, _bpe.CoreBPE.from_tokenizer_json, doc, specials, pattern, ignore_merges)
        return cls(core, name=os.path.basename(path))

    @classmethod
    def _from_merges(
        cls, tokens: list[bytes], merges: list[tuple[int, int]], special_tokens: dict[str, int], pattern: str
    ) -> Tokenizer:
        """Builds a tokenizer from id -> bytes, merges (by priority) and specials (used by train_bpe)."""
        vocab = [(t, i) for i, t in enumerate(tokens)]
        core = _bpe.CoreBPE.from_merges(vocab, merges, _specials_list(special_tokens), _canonical_pattern(pattern))
        return cls(core, name="trained")

    # ==== Encoding ====

    def _policy(self, allowed_special, disallowed_special) -> bytes:
        if allowed_special == frozenset() and disallowed_special == "all":
            return self._default_policy
        allowed = self._special_set(allowed_special, "allowed_special")
        disallowed = self._special_set(disallowed_special, "disallowed_special")
        policy = bytearray()
        for text, _, special in self._core.specials:
            if not special or text in allowed:
                policy.append(_POLICY_ALLOWED)
            elif text in disallowed:
                policy.append(_POLICY_DISALLOWED)
            else:
                policy.append(_POLICY_AS_TEXT)
        return bytes(policy)

    def _special_set(self, value, arg: str) -> Collection[str]:
        if value == "all":
            return self._special_tokens.keys()
        if isinstance(value, str) or not isinstance(value, Iterable):
            raise TypeError(f'{arg} must be "all" or a collection of special-token strings, got {value!r}')
        unknown = [t for t in value if t not in self._special_tokens]
        if unknown:
            raise ValueError(
                f"{arg}: {unknown[0]!r} is not a special token of this tokenizer "
                f"(it has {sorted(self._special_tokens)})"
            )
        return set(value)

    def _raise_disallowed(self, k: int):
        token = self._core.specials[k][0]
        raise ValueError(
            f"the text contains the special token {token!r}, which is disallowed. Pass allowed_special={{{token!r}}} "
            f"(or 'all') to encode it as its id, or disallowed_special=set() to encode it as plain text."
        )

    def encode(
        self,
        text: str,
        *,
        allowed_special: Literal["all"] | Collection[str] = frozenset(),
        disallowed_special: Literal["all"] | Collection[str] = "all",
        num_threads: int | None = None,
    ) -> list[int]:
        """Encodes `text`. Special-token text is disallowed by default (ValueError), as in tiktoken:
        text from users should not be able to inject control tokens. `allowed_special` lists the
        specials encoded as their ids; specials neither allowed nor disallowed are encoded as text.

        A text of 256 kB or more runs on up to `num_threads` threads within the call (default: the hardware's,
        at most 8), with the GIL released: its pieces in groups of about equal bytes, or a single pre-tokenized
        piece of that size (text without whitespace) cut into parts. The ids are the same as on one thread.
        """
        ids = self._core.encode(text, self._policy(allowed_special, disallowed_special), num_threads)
        if isinstance(ids, int):
            self._raise_disallowed(ids)
        return ids

    def encode_ordinary(self, text: str, *, num_threads: int | None = None) -> list[int]:
        """Encodes `text` with special-token strings treated as plain text; `num_threads` as in `encode`."""
        return self._core.encode_ordinary(text, num_threads)

    def encode_batch(
        self,
        texts: list[str],
        *,
        num_threads: int | None = None,
        allowed_special: Literal["all"] | Collection[str] = frozenset(),
        disallowed_special: Literal["all"] | Collection[str] = "all",
    ) -> list[list[int]]:
        """Encodes many texts on `num_threads` threads (default: all cores) with the GIL released. A giant
        piece may use the threads the batch leaves idle (`num_threads // len(texts)`)."""
        ids, bad_text, k = self._core.encode_batch(
            _as_text_list(texts), self._policy(allowed_special, disallowed_special), num_threads
        )
        if ids is None:
            try:
                self._raise_disallowed(k)
            except ValueError as e:
                raise ValueError(f"texts[{bad_text}]: {e}") from None
        return ids

    def encode_ordinary_batch(self, texts: list[str], *, num_threads: int | None = None) -> list[list[int]]:
        return self._core.encode_batch(_as_text_list(texts), None, num_threads)[0]

    # ==== Decoding ====

    def decode(self, ids: Iterable[int], errors: str = "replace") -> str:
        """Decodes ids to text; bytes that are not valid UTF-8 become U+FFFD (errors="replace")."""
        return self._core.decode(_as_id_list(ids), errors)

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """Decodes ids to their exact bytes."""
        return self._core.decode_bytes(_as_id_list(ids))

    # ==== Vocabulary ====

    def token_to_id(self, token: str | bytes) -> int | None:
        """Id of a token given as raw bytes, or as a str: a special token or a byte-level string ("Ġthe")."""
        if isinstance(token, (bytes, bytearray)):
            return self._core.token_to_id(bytes(token))
        if not isinstance(token, str):
            raise TypeError(f"token must be str or bytes, got {type(token).__name__}")
        if token in self._special_tokens or token in self._added_tokens:
            return self._special_tokens.get(token, self._added_tokens.get(token))
        raw = _from_bytelevel(token)
        return None if raw is None else self._core.token_to_id(raw)

    def id_to_token(self, id: int) -> str:
        """The token of `id`: its text for special tokens, else its byte-level string (as in tokenizer.json)."""
        if not isinstance(id, int) or isinstance(id, bool):
            raise TypeError(f"id must be an int, got {type(id).__name__}")
        if id < 0 or not self._core.has_id(id):
            raise ValueError(f"token id {id} is not in the vocabulary (size {self.vocab_size})")
        raw = self._core.token_bytes(id)
        return raw.decode("utf-8") if self._core.is_special(id) else _to_bytelevel(raw)

    def token_bytes(self, id: int) -> bytes:
        if not isinstance(id, int) or id < 0 or not self._core.has_id(id):
            raise ValueError(f"token id {id!r} is not in the vocabulary (size {self.vocab_size})")
        return self._core.token_bytes(id)

    @property
    def vocab_size(self) -> int:
        """Number of ids: the largest id + 1, specials included."""
        return self._core.vocab_size

    @property
    def special_tokens(self) -> dict[str, int]:
        return dict(self._special_tokens)

    @property
    def eot_token(self) -> int | None:
        """Id of `<|endoftext|>` if the tokenizer has it."""
        return self._special_tokens.get(_ENDOFTEXT)

    @property
    def pattern(self) -> str:
        return self._core.pattern

    def save(self, path: str | os.PathLike) -> None:
        """Writes a Hugging Face `tokenizer.json` that `tokenizers.Tokenizer.from_file` and `from_file` load."""
        from fastllm._tokenizer_json import write_tokenizer_json

        pattern = self._core.pattern
        write_tokenizer_json(
            os.fspath(path),
            vocab={
                self._core.token_bytes(i): i
                for i in range(self.vocab_size)
                if self._core.has_id(i) and not self._core.is_special(i)
            },
            merges=self._core.merges(),
            specials=self._core.specials,
            regex=PATTERNS.get(pattern, pattern),
            gpt2_regex=pattern == "gpt2",
            ignore_merges=not self._core.uses_merges,  # tiktoken: a piece that is a token is kept whole
        )


def _as_text_list(texts) -> list[str]:
    if isinstance(texts, str) or not isinstance(texts, Iterable):
        raise TypeError(f"texts must be a list of str, got {type(texts).__name__}")
    return texts if isinstance(texts, list) else list(texts)


def _as_id_list(ids):
    if isinstance(ids, (list, tuple)):
        return ids
    if hasattr(ids, "tolist"):  # torch tensors, numpy arrays
        ids = ids.tolist()
        return ids if isinstance(ids, list) else [ids]
    return list(ids)


@functools.lru_cache(maxsize=1)
def _gpt2_core() -> _bpe.CoreBPE:
    encoder, merges = os.path.join(ASSETS, "encoder.json"), os.path.join(ASSETS, "vocab.bpe")
    return _bpe.CoreBPE.from_gpt2_files(encoder, merges, [], "gpt2", True)


def train_bpe(*args, **kwargs) -> Tokenizer:
    """Trains a byte-level BPE in C++; see `fastllm._train_bpe.train_bpe`."""
    from fastllm._train_bpe import train_bpe as _train

    return _train(*args, **kwargs)
