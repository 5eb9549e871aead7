"""Preallocated KV caches: one per attention layer, gathered with the per-row lengths in a model-level `Cache`.

`KVCache` is a ring of C slots in the layout `fastllm.kernels.swa_decode` reads: position s < sink_tokens stays in
slot s, any later s lives in slot `sink_tokens + (s - sink_tokens) % (C - sink_tokens)`. A full-attention layer gets
C = the cache length, so the ring never wraps and slot == position; a sliding-window layer gets
C = window + sink_tokens + max_chunk - 1 slots, enough for every query of a chunk of up to max_chunk tokens.

A layer cache implements `write(positions, k, v)` (any per-row positions, at most C - sink_tokens of them),
`write_prefill(k, v)` (positions 0..T-1 of every row, any T for a ring) and `row(b)` (a view of batch row b that
shares storage). Other attention kinds (the MLA latent cache) provide the same three methods.
"""

from __future__ import annotations

import torch


class KVCache:
    """K/V ring buffers k (B, C, Hkv, D) and v (B, C, Hkv, Dv) of one attention layer (head-major storage)."""

    def __init__(self, k: torch.Tensor, v: torch.Tensor, sink_tokens: int = 0, ring: bool = False):
        self.k, self.v = k, v
        self.sink_tokens = sink_tokens
        self.ring = ring  # False: a full cache, where a prompt longer than C is an error instead of a wrap

    @classmethod
    def empty(cls, batch, slots, n_kv_head, head_dim, v_dim, *, sink_tokens=0, ring=False, dtype, device):
        # Stored head-major, (B, Hkv, C, D), and exposed as the (B, C, Hkv, D) view the kernels take (they accept
        # any strides): each head's keys are contiguous, so a decode step's q @ K^T is one strided-batch GEMM per
        # head on the CPU (the slot-major layout sends it to a ~30x slower path) and coalesced tile loads on a GPU.
        # Zeros, not torch.empty: the kernels never read unwritten slots, but NaN garbage would still trip anomaly
        # checks and makes dumps harder to read; the cost is one memset per cache.
        k = torch.zeros(batch, n_kv_head, slots, head_dim, dtype=dtype, device=device).transpose(1, 2)
        v = torch.zeros(batch, n_kv_head, slots, v_dim, dtype=dtype, device=device).transpose(1, 2)
        return cls(k, v, sink_tokens, ring)

    @property
    def slots(self) -> int:
        return self.k.shape[1]

    def slot_of(self, positions: torch.Tensor) -> torch.Tensor:
        """Slot (same shape) of each absolute position."""
        s = self.sink_tokens
        ring = s + (positions - s).remainder(self.slots - s)
        return torch.where(positions < s, positions, ring)

    def write(self, positions: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """Stores k (B, T, Hkv, D), v (B, T, Hkv, Dv) at positions (B, T); T <= C - sink_tokens (distinct slots)."""
        B = k.shape[0]
        slots = self.slot_of(positions)  # (B, T)
        rows = torch.arange(B, device=k.device)[:, None].expand_as(slots)  # (B, T)
        self.k.index_put_((rows, slots), k)
        self.v.index_put_((rows, slots), v)

    def write_prefill(self, k: torch.Tensor, v: torch.Tensor) -> None:
        """Stores positions 0..T-1 of every row; a ring keeps only its sinks and the last C - sink_tokens."""
        T, C, s = k.shape[1], self.slots, self.sink_tokens
        if T <= C:
            self.k[:, :T] = k
            self.v[:, :T] = v
            return
        if not self.ring:
            raise ValueError(f"KVCache: a prompt of {T} tokens does not fit the {C} cache slots (max_seq_len)")
        keep = torch.cat([torch.arange(s), torch.arange(T - (C - s), T)]).to(k.device)  # (C,) distinct slots
        slots = self.slot_of(keep)  # (C,)
        self.k.index_copy_(1, slots, k.index_select(1, keep))
        self.v.index_copy_(1, slots, v.index_select(1, keep))

    def row(self, b: int) -> KVCache:
        return KVCache(self.k[b : b + 1], self.v[b : b + 1], self.sink_tokens, self.ring)


class Cache:
    """The caches of a model's layers plus `seqlens` (B,) int32, the tokens each row holds.

    `fresh` is a host-side promise that every row is empty, so a forward may attend over the new tokens alone (the
    prefill path); it becomes False after any cached forward. `max_chunk` is the most tokens one decode step may
    append (sliding-window rings are sized for it); longer inputs on a non-fresh cache are split into chunks.
    """

    def __init__(self, layers: list, seqlens: torch.Tensor, max_chunk: int):
        self.layers = layers
        self.seqlens = seqlens
        self.max_chunk = max_chunk
        self.fresh = bool((seqlens == 0).all())

    @property
    def batch_size(self) -> int:
        return self.seqlens.shape[0]

    def row(self, b: int) -> Cache:
        """Batch row b as a cache of batch size 1 sharing storage (prefill rows of different lengths one by one,
        then decode the whole batch). The parent stops being fresh: its rows may now differ."""
        self.fresh = False
        return Cache([c.row(b) for c in self.layers], self.seqlens[b : b + 1], self.max_chunk)

    def reset(self) -> None:
        """Forgets every row (slots are overwritten before they are read again)."""
        self.seqlens.zero_()
        self.fresh = True
