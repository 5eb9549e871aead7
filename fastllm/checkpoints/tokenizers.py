"""The two small custom tokenizers of the seed projects, and `load_tokenizer_file` that tells JSON formats apart.

- llm-scratch (`artifacts/tokenizer.json`): `{"vocab", "merges": [[a, b], ...], "unk_token"}`, a Sennrich-style
  word-level BPE: text split on whitespace, each word's last character carries "</w>". Upstream applies whichever
  applicable merge a Python set yields first (hash-seed dependent, so not reproducible); we apply merges by rank
  (learn order), the deterministic standard. Whitespace other than single spaces is lost on decode, as upstream.
- L1 (`tokenizer.json`): `{"vocab", "special_tokens", ["merges": {"a b": rank}]}` in two eras, told apart by the
  vocabulary: era A (July 2025) is character-level on lower-cased text; era B (Aug 2025+) splits with the GPT-2
  pattern, maps bytes to GPT-2's printable alphabet and looks whole pieces up, falling back to rank-ordered merges
  (the shipped files have none) and then single symbols.

Both follow `fastllm.tokenizer.Tokenizer`'s method names where they mean the same thing (`encode`, `encode_batch`,
`decode`, `token_to_id`, `id_to_token`, `vocab_size`, `special_tokens`, `eot_token`, `save`); `encode` prepends
`<bos>` by default because both upstream generators do.
"""

from __future__ import annotations

import json
import os

from fastllm import _bpe

SPECIALS = ("<pad>", "<bos>", "<eos>", "<unk>")
END_OF_WORD = "</w>"


class _VocabTokenizer:
    def __init__(self, vocab: dict[str, int], *, name: str):
        self.vocab = dict(vocab)
        self.inv = {i: t for t, i in self.vocab.items()}
        self.name = name
        self.unk_id = self.vocab.get("<unk>")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, vocab_size={self.vocab_size})"

    @property
    def vocab_size(self) -> int:
        return max(self.inv, default=-1) + 1

    @property
    def special_tokens(self) -> dict[str, int]:
        return {t: self.vocab[t] for t in SPECIALS if t in self.vocab}

    @property
    def bos_token(self) -> int | None:
        return self.vocab.get("<bos>")

    @property
    def eot_token(self) -> int | None:
        return self.vocab.get("<eos>")

    def token_to_id(self, token: str) -> int | None:
        return self.vocab.get(token)

    def id_to_token(self, id: int) -> str:
        if id not in self.inv:
            raise ValueError(f"{self.name}: id {id} is not in the vocabulary")
        return self.inv[id]

    def _wrap(self, ids: list[int], add_bos: bool, add_eos: bool) -> list[int]:
        bos = [self.bos_token] if add_bos and self.bos_token is not None else []
        eos = [self.eot_token] if add_eos and self.eot_token is not None else []
        return bos + ids + eos

    def encode_batch(self, texts: list[str], *, add_bos: bool = True, add_eos: bool = False, num_threads=None):
        return [self.encode(t, add_bos=add_bos, add_eos=add_eos) for t in texts]


def _merge_by_rank(symbols: list[str], rank) -> list[str]:
    """Repeatedly merges every occurrence of the adjacent pair of lowest rank; rank(a, b) -> int | None."""
    while len(symbols) > 1:
        ranks = [rank(a, b) for a, b in zip(symbols, symbols[1:])]
        best = min((r for r in ranks if r is not None), default=None)
        if best is None:
            break
        out, i = [], 0
        while i < len(symbols):
            if i + 1 < len(symbols) and ranks[i] == best:
                out.append(symbols[i] + symbols[i + 1])
                i += 2
            else:
                out.append(symbols[i])
                i += 1
        symbols = out
    return symbols


class WordBPETokenizer(_VocabTokenizer):
    """llm-scratch's word-level `</w>` BPE."""

    def __init__(self, vocab: dict[str, int], merges: list, unk_token: str = "<unk>", *, name: str = "word-bpe"):
        super().__init__(vocab, name=name)
        self.merges = [tuple(m) for m in merges]
        self.ranks = {m: r for r, m in enumerate(self.merges)}
        self.unk_token = unk_token
        self.unk_id = self.vocab.get(unk_token)
        self._cache: dict[str, list[int]] = {}

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> WordBPETokenizer:
        with open(path, encoding="utf-8") as f:
            d = json.load(f)
        return cls(d["vocab"], d.get("merges", []), d.get("unk_token", "<unk>"), name=os.path.basename(path))

    def _word(self, word: str) -> list[int]:
        if word not in self._cache:
            symbols = list(word[:-1]) + [word[-1] + END_OF_WORD]
            symbols = _merge_by_rank(symbols, lambda a, b: self.ranks.get((a, b)))
            self._cache[word] = [self.vocab.get(s, self.unk_id) for s in symbols]
        return self._cache[word]

    def encode(self, text: str, *, add_bos: bool = True, add_eos: bool = False) -> list[int]:
        ids = [i for word in text.split() for i in self._word(word)]
        return self._wrap(ids, add_bos, add_eos)

    def decode(self, ids) -> str:
        skip = set(self.special_tokens.values())
        text = "".join(self.inv.get(int(i), "") for i in ids if int(i) not in skip)
        return " ".join(text.replace(END_OF_WORD, " ").split())

    def save(self, path: str | os.PathLike) -> None:
        data = {"vocab": self.vocab, "merges": [list(m) for m in self.merges], "unk_token": self.unk_token}
        with open(path, "w", encoding="utf-8") as f:
            json.dump(data, f, ensure_ascii=False)


class L1Tokenizer(_VocabTokenizer):
    """L1's JSON tokenizer, era "char" (A) or "bytelevel" (B), detected from the vocabulary."""

    def __init__(
        self, vocab: dict[str, int], special_tokens: dict[str, int] | None = None, merges=None, *, name: str = "l1"
    ):
        specials = dict(special_tokens or {"<pad>": 0, "<unk>": 1, "<bos>": 2, "<eos>": 3})
        super().__init__({**vocab, **specials}, name=name)
        self._specials = specials
        self.merges = dict(merges or {})
        plain = [t for t in vocab if t not in specials]
        self.era = "char" if all(len(t) == 1 for t in plain) and "Ġ" not in vocab else "bytelevel"
        self._to_char = {b: _bpe.byte_to_unicode(b) for b in range(256)}
        self._from_char = {c: b for b, c in self._to_char.items()}

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> L1Tokenizer:
        with open(path, encoding="utf-8") as f:
            d = json.load(f)
        return cls(d["vocab"], d.get("special_tokens"), d.get("merges"), name=os.path.basename(path))

    @property
    def special_tokens(self) -> dict[str, int]:
        return dict(self._specials)

    def _piece(self, piece: str) -> list[int]:
        mapped = "".join(self._to_char[b] for b in piece.encode("utf-8"))
        if mapped in self.vocab:
            return [self.vocab[mapped]]
        symbols = _merge_by_rank(list(mapped), lambda a, b: self.merges.get(f"{a} {b}"))
        return [self.vocab.get(s, self.unk_id) for s in symbols]

    def encode(self, text: str, *, add_bos: bool = True, add_eos: bool = False) -> list[int]:
        if self.era == "char":
            ids = [self.vocab.get(ch, self.unk_id) for ch in text.lower()]
        else:
            ids = [i for piece in _bpe.pretokenize(text, "gpt2") for i in self._piece(piece)]
        return self._wrap(ids, add_bos, add_eos)

    def decode(self, ids) -> str:
        skip = {self.vocab.get(t) for t in ("<pad>", "<bos>", "<eos>")}
        if self.era == "char":
            skip.add(self.unk_id)
            return "".join(self.inv.get(int(i), "") for i in ids if int(i) not in skip)
        toks = [" " if int(i) == self.unk_id else self.inv.get(int(i), "") for i in ids if int(i) not in skip]
        raw = b"".join(
            bytes([self._from_char[c]]) if c in self._from_char else c.encode("utf-8") for c in "".join(toks)
        )
        return " ".join(raw.decode("utf-8", errors="replace").split())

    def save(self, path: str | os.PathLike) -> None:
        vocab = {t: i for t, i in self.vocab.items() if t not in self._specials}
        data = {"vocab": vocab, "special_tokens": self._specials, "vocab_size": len(self.vocab)}
        if self.merges:
            data["merges"] = self.merges
        with open(path, "w", encoding="utf-8") as f:
            json.dump(data, f, ensure_ascii=False)


def load_tokenizer_file(path: str | os.PathLike):
    """A tokenizer from a JSON file in any supported format: HF tokenizer.json, llm-scratch, L1."""
    from fastllm.tokenizer import Tokenizer

    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as f:
            d = json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: not a readable tokenizer JSON file ({e})") from None
    if isinstance(d, dict) and isinstance(d.get("model"), dict):
        return Tokenizer.from_file(path)
    if isinstance(d, dict) and isinstance(d.get("vocab"), dict) and isinstance(d.get("merges", []), list):
        if "special_tokens" not in d:
            return WordBPETokenizer.from_file(path)
    if isinstance(d, dict) and isinstance(d.get("vocab"), dict) and "special_tokens" in d:
        return L1Tokenizer.from_file(path)
    raise ValueError(
        f"{path}: unknown tokenizer format: expected an HF tokenizer.json ('model'), an llm-scratch file ('vocab', "
        f"'merges' list, 'unk_token') or an L1 file ('vocab', 'special_tokens')"
    )


def gpt2_tokenizer(directory: str, added: dict[str, int] | None = None):
    """A GPT-2 byte-level BPE for families trained with HF's `gpt2` tokenizer plus a few added special tokens.

    Prefers the files saved beside the weights: `tokenizer.json` (HF `save_pretrained`, which records the added
    tokens), else `vocab.json` + `merges.txt`, else the GPT-2 vocabulary bundled with fastllm. Without a
    tokenizer.json, `added` (text -> id, ids after GPT-2's 50257) is appended as special tokens beside
    `<|endoftext|>` (50256): like every special token they encode as ids only when allowed (`allowed_special`).
    """
    from fastllm.tokenizer import ASSETS, Tokenizer

    path = os.path.join(directory, "tokenizer.json")
    if os.path.isfile(path):
        return Tokenizer.from_file(path)
    vocab, merges = os.path.join(directory, "vocab.json"), os.path.join(directory, "merges.txt")
    if not (os.path.isfile(vocab) and os.path.isfile(merges)):
        vocab, merges = os.path.join(ASSETS, "encoder.json"), os.path.join(ASSETS, "vocab.bpe")
    return Tokenizer.from_vocab_merges(vocab, merges, special_tokens={"<|endoftext|>": 50256, **(added or {})})
