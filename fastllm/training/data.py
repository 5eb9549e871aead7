"""Token-stream data: text files -> one token stream -> packed fixed-length rows -> a deterministic batch order.

The stream is every file's tokens in order, each file followed by `<|endoftext|>` when the tokenizer has it. Row i
of a split is tokens[i L : i L + L + 1] (inputs are the first L, targets the last L). The last `val_fraction` of the
stream is the validation split, so no training row overlaps it.

Batch order is a pure function of (seed, cursor): the cursor counts training rows consumed since step 0, epoch
e = cursor // n_rows visits the rows in the order randperm(n_rows, seed + e). Resuming only needs the cursor, and
under DDP rank r of W takes rows [r B, (r + 1) B) of each global micro-batch of W B rows, so W processes with batch
B see exactly the rows one process with batch W B sees.
"""

from __future__ import annotations

import glob
import hashlib
import os
import re

import torch

_CHUNK_CHARS = 1 << 20  # texts are encoded in ~1 MB pieces on all cores (Tokenizer.encode_ordinary_batch)
# A newline between two non-space characters ends a pre-token under the gpt2, cl100k and o200k patterns, so cutting
# there encodes a file exactly as if it were encoded whole.
_SAFE_CUT = re.compile(r"\S\n(?=\S)")


def expand_files(patterns: list[str]) -> list[str]:
    files = []
    for pat in patterns:
        found = sorted(glob.glob(os.path.expanduser(pat))) if glob.has_magic(pat) else [pat]
        if not found:
            raise FileNotFoundError(f"data: no file matches {pat!r}")
        for path in found:
            if not os.path.isfile(path):
                raise FileNotFoundError(f"data: {path}: no such file")
            files.append(path)
    if not files:
        raise ValueError("data: no training files given (--data FILE[,FILE...])")
    return files


def _chunks(text: str):
    start = 0
    while start < len(text):
        end = start + _CHUNK_CHARS
        m = _SAFE_CUT.search(text, end) if end < len(text) else None
        end = m.end() if m else len(text)
        yield text[start:end]
        start = end


def tokenize_files(tokenizer, files: list[str]) -> torch.Tensor:
    """(N,) int32: the files' tokens in order, each file followed by <|endoftext|> if the tokenizer has it."""
    eot = tokenizer.eot_token
    parts = []
    for path in files:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        for ids in tokenizer.encode_ordinary_batch(list(_chunks(text))):
            parts.append(torch.tensor(ids, dtype=torch.int32))
        if eot is not None:
            parts.append(torch.tensor([eot], dtype=torch.int32))
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.int32)


def fingerprint(tokens: torch.Tensor) -> str:
    """A short hash of the token stream; a resumed run checks that its data did not change."""
    return hashlib.sha1(tokens.numpy().tobytes()).hexdigest()[:16]


class PackedRows:
    """Rows of seq_len + 1 tokens cut from a stream, consecutive rows sharing one token."""

    def __init__(self, tokens: torch.Tensor, seq_len: int):
        self.tokens, self.seq_len = tokens, seq_len
        self.n = max(0, (tokens.numel() - 1) // seq_len)

    def __len__(self) -> int:
        return self.n

    def rows(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and targets (len(idx), seq_len) int64 for row indices idx (k,)."""
        offs = idx[:, None] * self.seq_len + torch.arange(self.seq_len + 1)  # (k, L + 1)
        r = self.tokens[offs].long()  # (k, L + 1)
        return r[:, :-1], r[:, 1:]


def split(tokens: torch.Tensor, seq_len: int, val_fraction: float) -> tuple[PackedRows, PackedRows]:
    """Train and validation rows: the validation split is the last val_fraction of the stream (at least one row
    when val_fraction > 0)."""
    n_val = 0
    if val_fraction > 0:
        n_val = max(int(tokens.numel() * val_fraction), seq_len + 1)
    cut = tokens.numel() - n_val
    train, val = PackedRows(tokens[:cut], seq_len), PackedRows(tokens[cut:], seq_len)
    if len(train) == 0:
        raise ValueError(
            f"data: {tokens.numel()} tokens give no training row of {seq_len + 1} tokens after holding out "
            f"{n_val} for validation; add text or lower seq_len / val_fraction"
        )
    return train, val


class BatchOrder:
    """The rows of micro-batches: `next(cursor)` -> (row indices of this rank, the cursor after the global batch)."""

    def __init__(self, n_rows: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1):
        self.n, self.batch, self.seed, self.rank, self.world = n_rows, batch_size, seed, rank, world_size
        self._epoch, self._perm = -1, None

    def _perm_of(self, epoch: int) -> torch.Tensor:
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(self.seed + epoch)
            self._epoch, self._perm = epoch, torch.randperm(self.n, generator=g)
        return self._perm

    def next(self, cursor: int) -> tuple[torch.Tensor, int]:
        start = cursor + self.rank * self.batch
        idx = torch.tensor([int(self._perm_of(c // self.n)[c % self.n]) for c in range(start, start + self.batch)])
        return idx, cursor + self.world * self.batch


def eval_batches(n_rows: int, batch_size: int, rank: int, world_size: int, limit: int = 0):
    """This rank's validation row indices, batch by batch (in order; up to `limit` global batches if limit > 0).
    Every rank gets the same number of batches (ranks stay in step); past the last row a batch is empty."""
    step = batch_size * world_size
    n_batches = -(-n_rows // step) if limit <= 0 else min(limit, -(-n_rows // step))
    for b in range(n_batches):
        lo = min(b * step + rank * batch_size, n_rows)
        yield torch.arange(lo, min(lo + batch_size, n_rows))
