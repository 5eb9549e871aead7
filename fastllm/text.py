"""Text out of token ids, one row at a time: incremental decoding, stop strings, and the tokenizer adapters.

`TextStream` emits only complete UTF-8 (byte-level tokenizers: each token's bytes through an incremental decoder,
O(1) per token), cuts the text before the first stop string, and holds back a tail that could still become one, so
what it has emitted is always a prefix of the final text and the pieces join to exactly that text.
"""

from __future__ import annotations

import codecs
from collections.abc import Sequence


def encode(tokenizer, text: str, *, specials: bool = True, bos: bool = True) -> list[int]:
    """Ids of text. fastllm's byte-level BPE: special-token text becomes its id only with `specials` (user input in
    chat never can). The seeds' vocabulary tokenizers (llm-scratch, L1) prepend <bos> with `bos`, as their
    generators do."""
    if hasattr(tokenizer, "encode_ordinary"):
        return tokenizer.encode(text, allowed_special="all") if specials else tokenizer.encode_ordinary(text)
    return tokenizer.encode(text, add_bos=bos)


class TextStream:
    """One row's text, token by token: complete UTF-8 only, stop strings detected, their possible starts held back."""

    def __init__(self, tokenizer, stops: Sequence[str] = ()):
        self.tokenizer = tokenizer
        self.stops = [s for s in stops if s]
        self.reach = max((len(s) for s in self.stops), default=0)
        self.byte_level = hasattr(tokenizer, "decode_bytes")
        self.utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.ids: list[int] = []  # vocabulary tokenizers only: decoded whole, they have no byte-level pieces
        self.decoded = ""
        self.held = ""  # decoded, not emitted: may be the start of a stop string
        self.pieces: list[str] = []
        self.stopped = False

    @property
    def text(self) -> str:
        return "".join(self.pieces)

    def _decode(self, token: int) -> str:
        if self.byte_level:  # O(1) per token: the token's bytes through an incremental UTF-8 decoder
            return self.utf8.decode(self.tokenizer.decode_bytes([token]))
        # The seeds' pure-Python tokenizers normalise whitespace on decode, so a piece is the growth of the whole
        # decoded text (re-decoded each token, linear in the row) and waits while the text is not an extension.
        self.ids.append(token)
        new = self.tokenizer.decode(self.ids)
        if new.endswith("\ufffd") or not new.startswith(self.decoded):
            return ""
        piece, self.decoded = new[len(self.decoded) :], new
        return piece

    def push(self, token: int) -> str:
        """The text to emit after `token` ('' while held back); sets `stopped` once a stop string completes, after
        which nothing more is emitted."""
        if self.stopped:
            return ""
        buf = self.held + self._decode(token)
        hits = [i for i in (buf.find(s) for s in self.stops) if i >= 0]
        if hits:
            self.stopped, self.held = True, ""
            return self._emit(buf[: min(hits)])
        hold = 0  # the longest tail of buf that a stop string starts with
        for n in range(min(len(buf), self.reach - 1), 0, -1):
            if any(s.startswith(buf[-n:]) for s in self.stops):
                hold = n
                break
        self.held = buf[len(buf) - hold :]
        return self._emit(buf[: len(buf) - hold])

    def flush(self) -> str:
        """The rest of the text when the row ends without a stop string (held text, an unfinished UTF-8 tail)."""
        if self.stopped:
            return ""
        tail = self.utf8.decode(b"", final=True) if self.byte_level else ""
        if not self.byte_level and self.ids:
            new = self.tokenizer.decode(self.ids)
            tail = new[len(self.decoded) :] if new.startswith(self.decoded) else ""
        text, self.held = self.held + tail, ""
        return self._emit(text)

    def _emit(self, piece: str) -> str:
        if piece:
            self.pieces.append(piece)
        return piece


def eos_ids_of(tokenizer, eos_id=None, extra_tokens: Sequence[str] = ()) -> list[int]:
    """EOS ids: eos_id (an int or ints) if given, else the tokenizer's end-of-text id; plus the ids of extra_tokens
    that the tokenizer has (e.g. ChatML's <|im_end|>)."""
    if eos_id is not None:
        ids = [eos_id] if isinstance(eos_id, int) else list(eos_id)
    else:
        eot = getattr(tokenizer, "eot_token", None) if tokenizer is not None else None
        ids = [] if eot is None else [eot]
    for t in extra_tokens:
        i = tokenizer.token_to_id(t) if tokenizer is not None else None
        if i is not None and i not in ids:
            ids.append(i)
    return ids
