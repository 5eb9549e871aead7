"""Attention modules by kind, registered in ATTENTION: "full" and "sliding" here (MLA lives in its own file).

Every kind takes (x (B, T, d), ctx, cache) and returns (B, T, d), and builds its own layer cache with
`new_cache(batch, max_seq_len, max_chunk, dtype, device)`. `ctx` (models.transformer.Context) carries the absolute
positions of the new tokens, the shared rotary tables, and which path to take:

- no cache, or ctx.fresh: attend over the new tokens alone (`sliding_window_attention`), then (with a cache) store
  them with `write_prefill`;
- otherwise: store the new K/V in their ring slots, then `swa_decode` against the cache with the per-row lengths
  ctx.seqlens (which already count the new tokens).
"""

from __future__ import annotations

import torch
from torch import nn

import fastllm.kernels as K
from fastllm.models.cache import KVCache
from fastllm.models.config import ModelConfig
from fastllm.models.layers import Linear, apply_rope

ATTENTION: dict[str, type[nn.Module]] = {}


def register_attention(*kinds: str):
    """Class decorator: `@register_attention("mla")` makes layers of that kind use the class."""

    def deco(cls):
        for kind in kinds:
            ATTENTION[kind] = cls
        return cls

    return deco


@register_attention("full", "sliding")
class Attention(nn.Module):
    """Multi-head (GQA/MQA) causal attention with a packed q/k/v projection `wqkv` (rows: q heads, k heads, v heads;
    heads contiguous), optional RoPE, optional learned clipped relative bias, full or sliding-window masks."""

    def __init__(self, config: ModelConfig, layer_idx: int):
        super().__init__()
        sliding = config.layer_kinds()[layer_idx] == "sliding"
        self.window = config.window if sliding else None
        self.sink_tokens = config.sink_tokens if sliding else 0
        self.n_head, self.n_kv_head, self.head_dim = config.n_head, config.n_kv_head, config.head_dim
        self.rope_style = config.rope_style if config.position == "rope" else None
        self.scale = config.attn_scale
        q_dim, kv_dim = self.n_head * self.head_dim, self.n_kv_head * self.head_dim
        self.wqkv = Linear(config.d_model, q_dim + 2 * kv_dim, bias=config.qkv_bias)
        self.wo = Linear(q_dim, config.d_model, bias=config.out_bias)
        # (H, R): bias of distance p - j is rel_bias[h, min(p - j, R - 1)]; the kernels index it themselves.
        self.rel_bias = nn.Parameter(torch.zeros(config.n_head, config.rel_bias)) if config.rel_bias else None

    def new_cache(self, batch: int, max_seq_len: int, max_chunk: int, dtype, device) -> KVCache:
        slots, ring = max_seq_len, False
        if self.window is not None:
            slots = min(max_seq_len, self.window + self.sink_tokens + max_chunk - 1)
            ring = slots < max_seq_len
            slots = max(slots, self.sink_tokens + 1)  # the swa_decode layout needs a ring after the sinks
        return KVCache.empty(
            batch,
            slots,
            self.n_kv_head,
            self.head_dim,
            self.head_dim,
            sink_tokens=self.sink_tokens,
            ring=ring,
            dtype=dtype,
            device=device,
        )

    def forward(self, x: torch.Tensor, ctx, cache: KVCache | None = None) -> torch.Tensor:
        B, T, _ = x.shape
        H, Hkv, D = self.n_head, self.n_kv_head, self.head_dim
        q, k, v = self.wqkv(x).split([H * D, Hkv * D, Hkv * D], dim=-1)
        q = q.view(B, T, H, D)  # (B, T, H, D)
        k = k.view(B, T, Hkv, D)  # (B, T, Hkv, D)
        v = v.view(B, T, Hkv, D)  # (B, T, Hkv, D)
        if self.rope_style is not None:
            cos, sin = ctx.rope
            q, k = apply_rope(q, cos, sin, self.rope_style), apply_rope(k, cos, sin, self.rope_style)
        kw = dict(softmax_scale=self.scale, rel_bias=self.rel_bias, sink_tokens=self.sink_tokens)
        if cache is None or ctx.fresh:
            o = K.sliding_window_attention(q, k, v, self.window, **kw)  # (B, T, H, D)
            if cache is not None:
                cache.write_prefill(k, v)
        else:
            cache.write(ctx.positions, k, v)
            o = K.swa_decode(q, cache.k, cache.v, ctx.seqlens, self.window, **kw)  # (B, T, H, D)
        return self.wo(o.reshape(B, T, H * D))
