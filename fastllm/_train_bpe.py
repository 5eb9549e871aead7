"""Train a byte-level BPE tokenizer: `train_bpe`, the Python side of the C++ trainer (`fastllm._bpe.BpeTrainer`).

This module owns the arguments (validation, reading files, special tokens, the progress line); counting pieces and
learning merges happen in C++ (csrc/train.cpp) with the GIL released.
"""

from __future__ import annotations

import operator
import os
import re
import sys
import time
from collections.abc import Iterable, Iterator

from fastllm import _bpe
from fastllm.tokenizer import PATTERNS, Tokenizer, _canonical_pattern

__all__ = ["train_bpe"]

# Files are read this many characters at a time (then cut at a line boundary), and texts are handed to C++ in
# batches of about _BATCH_CHARS, which it counts on all cores. Memory stays O(batch + distinct pieces).
_CHUNK_CHARS = 1 << 20
_BATCH_CHARS = 16 << 20
_BATCH_ITEMS = 4096


def train_bpe(
    files_or_iterator,
    vocab_size: int,
    *,
    pattern: str = "gpt2",
    special_tokens: Iterable[str] = (),
    min_frequency: int = 2,
    show_progress: bool | None = None,
) -> Tokenizer:
    """Learns a byte-level BPE vocabulary from a corpus and returns it as a `Tokenizer`.

    The corpus is pre-tokenized with `pattern`, the distinct pieces are counted, and the most frequent adjacent pair
    of tokens is merged, again and again, starting from the 256 single bytes. Equal counts are broken by the merged
    bytes (lexicographically smallest first), then by the smallest (left id, right id): the result depends only on
    the corpus, not on the order of files or texts, nor on the number of threads.

    Args:
        files_or_iterator: the corpus. A `str` or `os.PathLike` is one UTF-8 text file. A list or tuple holds either
            file paths (every item an `os.PathLike` or the name of an existing file) or texts (no item names a file).
            Any other iterable (a generator, a dataset column) yields texts (`str`). Pieces never span two texts;
            files are streamed in chunks cut after a newline that sits between two non-space characters, which the
            built-in patterns never match across, so a file trains exactly as if read whole.
        vocab_size: the size of the result: 256 byte tokens + merges + special tokens. It is smaller when the corpus
            runs out of pairs seen at least `min_frequency` times.
        pattern: pre-tokenization: "gpt2" (alias "r50k", "p50k"), "cl100k", "o200k", or a regex.
        special_tokens: strings that get the ids after the merges, in order (e.g. ["<|endoftext|>"]). Their
            occurrences in the corpus are cut out before counting, so no merge is learned across or inside them.
        min_frequency: stop merging when the best pair occurs fewer times than this.
        show_progress: print a progress line on stderr; None: when stderr is a terminal.

    Returns:
        A `Tokenizer`: ids 0..255 are the bytes, then one id per merge in merge order, then the special tokens.
        `save(path)` writes a Hugging Face tokenizer.json.

    Example:
        >>> tok = train_bpe(["data/train.txt"], vocab_size=8192, special_tokens=["<|endoftext|>"])
        >>> tok.decode(tok.encode("hello world")) == "hello world"
        True
    """
    vocab_size = _as_int(vocab_size, "vocab_size")
    min_frequency = _as_int(min_frequency, "min_frequency")
    if min_frequency < 0:
        raise ValueError(f"min_frequency must be >= 0, got {min_frequency}")
    specials = _check_specials(special_tokens)
    if vocab_size < 256 + len(specials):
        raise ValueError(
            f"vocab_size must be at least 256 (the byte tokens) + {len(specials)} (special tokens) = "
            f"{256 + len(specials)}, got {vocab_size}"
        )
    pattern = _check_pattern(pattern)
    if show_progress is None:
        show_progress = sys.stderr is not None and sys.stderr.isatty()
    progress = _ProgressLine() if show_progress else None

    trainer = _bpe.BpeTrainer(pattern)  # ValueError for a regex it cannot compile
    cut_specials = _special_splitter(specials)
    batch: list[str] = []
    batch_chars = counted_chars = 0
    for text in _corpus_texts(files_or_iterator):
        pieces = cut_specials(text)
        batch.extend(pieces)
        batch_chars += len(text)
        if batch_chars >= _BATCH_CHARS or len(batch) >= _BATCH_ITEMS:
            trainer.add_texts(batch)
            counted_chars += batch_chars
            batch, batch_chars = [], 0
            if progress:
                progress.counting(counted_chars)
    trainer.add_texts(batch)
    if progress:
        progress.counting(counted_chars + batch_chars)
    if trainer.num_words == 0:
        raise ValueError("the corpus is empty: no text to train on (or the pattern matched none of it)")

    num_merges = vocab_size - 256 - len(specials)
    try:
        tokens, merges = trainer.train(num_merges, min_frequency, progress.merging if progress else None)
    finally:
        if progress:
            progress.close()
    special_ids = {s: len(tokens) + i for i, s in enumerate(specials)}
    return Tokenizer._from_merges(tokens, merges, special_ids, pattern)


def _as_int(value, name: str) -> int:
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an int, got {value!r}")
    try:
        return operator.index(value)  # int, numpy integers
    except TypeError:
        raise ValueError(f"{name} must be an int, got {type(value).__name__}") from None


def _check_specials(special_tokens) -> list[str]:
    if isinstance(special_tokens, (str, bytes)) or not isinstance(special_tokens, Iterable):
        raise ValueError(f"special_tokens must be a list of str, got {special_tokens!r}")
    specials = list(special_tokens)
    for s in specials:
        if not isinstance(s, str) or not s:
            raise ValueError(f"special tokens must be non-empty str, got {s!r}")
    if len(set(specials)) != len(specials):
        raise ValueError(f"special_tokens has duplicates: {specials!r}")
    return specials


def _check_pattern(pattern) -> str:
    if not isinstance(pattern, str) or not pattern:
        raise ValueError(f"pattern must be a built-in name ({', '.join(PATTERNS)}) or a regex, got {pattern!r}")
    canonical = _canonical_pattern(pattern)
    # A bare word is almost surely a misspelt built-in name; as a regex it would only match that literal word.
    if canonical not in PATTERNS and re.fullmatch(r"[\w\-]+", canonical):
        raise ValueError(f"unknown pattern {pattern!r}: use one of {', '.join(PATTERNS)} or a regex")
    return canonical


def _special_splitter(specials: list[str]):
    if not specials:
        return lambda text: [text]
    if len(specials) == 1:
        return lambda text: text.split(specials[0])
    # Longest first, so a special that contains another is cut whole.
    alternation = re.compile("|".join(re.escape(s) for s in sorted(specials, key=len, reverse=True)))
    return alternation.split


def _corpus_texts(corpus) -> Iterator[str]:
    """Yields the texts of the corpus (file chunks or the iterable's items), validating as it goes."""
    if isinstance(corpus, (str, os.PathLike)):
        yield from _read_file(corpus)
        return
    if isinstance(corpus, (bytes, bytearray)) or not isinstance(corpus, Iterable):
        raise ValueError(
            f"files_or_iterator must be a path, a list of paths or an iterable of str, got {type(corpus).__name__}"
        )
    if isinstance(corpus, (list, tuple)) and _are_paths(corpus):
        for path in corpus:
            yield from _read_file(path)
        return
    for i, text in enumerate(corpus):
        if not isinstance(text, str):
            raise ValueError(f"the corpus must yield str, got {type(text).__name__} at item {i}")
        yield text


def _are_paths(items: list | tuple) -> bool:
    is_path = [isinstance(x, os.PathLike) or (isinstance(x, str) and _is_file(x)) for x in items]
    if all(is_path) and items:
        return True
    if any(is_path):
        first_text = next(x for x, p in zip(items, is_path) if not p)
        raise ValueError(f"the list mixes file paths and texts (or names a missing file): {first_text!r:.80}")
    # Strings that all look like file names but name no file are a typo, not a corpus.
    if items and all(isinstance(x, str) and re.fullmatch(r"[^\s]{1,1024}\.[A-Za-z0-9]{1,8}", x) for x in items):
        raise FileNotFoundError(f"no such file: {items[0]!r} (to train on these strings as text, pass iter(...))")
    return False


def _is_file(s: str) -> bool:
    return len(s) < 4096 and "\n" not in s and "\0" not in s and os.path.isfile(s)


# Places where a text can be cut without changing any piece of the built-in patterns (see _safe_cut).
_SAFE_CUT = re.compile(r"(?<=\S)\n(?=[^\s/])|(?<=[^\W_])(?=\r?\n)")


def _read_file(path) -> Iterator[str]:
    """Streams a UTF-8 file in chunks of about _CHUNK_CHARS characters, cut where no piece can span (_safe_cut)."""
    carry = ""
    with open(path, encoding="utf-8", newline="") as f:  # newline="": train on the bytes as stored (\r\n stays)
        while True:
            block = f.read(_CHUNK_CHARS)
            if not block:
                break
            text = carry + block
            cut = _safe_cut(text, max(1, len(carry) - 1))
            if cut < 0 and len(text) < 16 * _CHUNK_CHARS:
                carry = text  # no safe place yet: read on rather than change a piece
                continue
            if cut < 0:  # 16 chunks without one: fall back to the last line end
                cut = text.rfind("\n") + 1 or len(text)
            yield text[:cut]
            carry = text[cut:]
    if carry:
        yield carry


def _safe_cut(text: str, start: int) -> int:
    """The last position >= start where cutting `text` changes no piece of the built-in patterns, or -1.

    Two kinds of place qualify. After a "\\n" between two non-space characters (x\\ny): the built-in patterns
    put a newline only in whitespace pieces or at the end of punctuation (o200k also takes a "/" after it, hence not
    before "/"), and their look-ahead rules ("\\s+(?!\\S)", "\\s++$") split "x\\n" the same at the end of a text
    as before "y". And before a line end that follows a letter or digit (x|\\r\\n): letter and digit pieces stop
    there anyway. Python's isspace() and isalnum() err on the safe side of the patterns' \\s and \\p{L}\\p{N}. A
    user regex may still see a difference.
    """
    pos = len(text)
    for _ in range(64):  # the last few lines almost always have one; rfind is a fast scan
        pos = text.rfind("\n", start, pos)
        if pos < 0:
            return -1
        if not text[pos - 1].isspace() and pos + 1 < len(text) and not text[pos + 1].isspace() and text[pos + 1] != "/":
            return pos + 1
        end = pos - 1 if text[pos - 1] == "\r" else pos
        if end >= 1 and text[end - 1].isalnum():
            return end
    last = None  # the same two rules as a regex, over the rest
    for last in _SAFE_CUT.finditer(text, start, pos):
        pass
    return last.end() if last is not None else -1


class _ProgressLine:
    """One updating line on stderr: counting, then merges done / total and the elapsed time."""

    def __init__(self):
        self.start = time.perf_counter()
        self.shown = False

    def _show(self, message: str) -> None:
        elapsed = time.perf_counter() - self.start
        sys.stderr.write(f"\rtrain_bpe: {message}  {elapsed:6.1f}s\033[K")
        sys.stderr.flush()
        self.shown = True

    def counting(self, chars: int) -> None:
        self._show(f"counted {chars / 1e6:.1f}M characters")

    def merging(self, done: int, total: int) -> None:
        self._show(f"merges {done}/{total}")

    def close(self) -> None:
        if self.shown:
            sys.stderr.write("\n")
            sys.stderr.flush()
