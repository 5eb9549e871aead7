"""The Transformer: embeddings, a stack of blocks chosen by config, final norm, LM head; full or cached forward.

Canonical parameter names (every checkpoint format maps onto these):

    tok_emb.weight (V, d)                    pos_emb.weight (max_seq_len, d)          [position="learned"]
    tok_emb.weight (V, r), tok_proj.weight (d, r)                                     [embed_rank = r > 0]
    layers.{i}.attn_norm.{weight,bias}       layers.{i}.mlp_norm.{weight,bias}        [bias: layernorm only]
    layers.{i}.attn.wqkv.{weight,bias} ((H + 2 Hkv) hd, d)    layers.{i}.attn.wo.{weight,bias} (d, H hd)
    layers.{i}.attn.rel_bias (H, R)                                                   [rel_bias > 0]
    layers.{i}.mlp.w_in.{weight,bias} (d_ff or 2 d_ff, d) | layers.{i}.mlp.w_gate / w_up (d_ff, d)
    layers.{i}.mlp.w_out.{weight,bias} (d, d_ff)
    layers.{i}.attn.{wq | wq_a, q_norm.*, wq_b}, layers.{i}.attn.{wkv_a, kv_norm.*, wkv_b, wo}    [mla layers]
    layers.{i}.inl_norm.*, layers.{i}.inl.{mu_global, mu_offsets, ctrl_in.*, ctrl_out.*}         [block="inl"]
    norm.{weight,bias}                       lm_head.weight (V, d) [absent when tied], lm_head.bias (V,)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from fastllm.models.attention import ATTENTION
from fastllm.models.cache import Cache
from fastllm.models.config import ModelConfig
from fastllm.models.layers import MLP, Linear, make_norm, rope_cos_sin, sinusoidal_positions


@dataclass
class Context:
    """What every layer of one forward shares."""

    positions: torch.Tensor  # (1 or B, T) int64, absolute positions of the new tokens
    rope: tuple[torch.Tensor, torch.Tensor] | None  # cos, sin (1 or B, T, rotary_dim / 2) fp32, position="rope"
    seqlens: torch.Tensor | None  # (B,) tokens per row including the new ones (cached decode path only)
    fresh: bool  # attend over the new tokens alone (no cache, or an empty one)


class Block(nn.Module):
    """Pre-norm block: x += attn(attn_norm(x)); x += mlp(mlp_norm(x))."""

    def __init__(self, config: ModelConfig, layer_idx: int):
        super().__init__()
        kind = config.layer_kinds()[layer_idx]
        if kind not in ATTENTION:
            raise ValueError(f"layer {layer_idx}: unknown attention kind {kind!r}; registered: {sorted(ATTENTION)}")
        self.attn_norm = make_norm(config)
        self.attn = ATTENTION[kind](config, layer_idx)
        self.mlp_norm = make_norm(config)
        self.mlp = MLP(config)

    def new_cache(self, batch, max_seq_len, max_chunk, dtype, device):
        return self.attn.new_cache(batch, max_seq_len, max_chunk, dtype, device)

    def forward(self, x: torch.Tensor, ctx: Context, cache=None) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), ctx, cache)  # (B, T, d)
        return x + self.mlp(self.mlp_norm(x))  # (B, T, d)


BLOCKS: dict[str, type[nn.Module]] = {"prenorm": Block}


class Transformer(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        if config.block not in BLOCKS:
            raise ValueError(f"unknown block type {config.block!r}; registered: {sorted(BLOCKS)}")
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.embed_rank or config.d_model)
        # low-rank factorised embedding (INL): V x r table, then r -> d; the head stays a full (V, d) matrix
        self.tok_proj = Linear(config.embed_rank, config.d_model, bias=False) if config.embed_rank else None
        self.pos_emb = nn.Embedding(config.max_seq_len, config.d_model) if config.position == "learned" else None
        self.layers = nn.ModuleList(BLOCKS[config.block](config, i) for i in range(config.n_layer))
        self.norm = make_norm(config) if config.final_norm else nn.Identity()
        self.lm_head = Linear(config.d_model, config.vocab_size, bias=config.lm_head_bias)
        if config.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight
        if not any(p.is_meta for p in self.parameters()):
            self.apply(_init_weights)

    def tie_weights(self) -> None:
        if self.config.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight

    # ---- caches ----

    def new_cache(
        self, batch_size: int, max_seq_len: int | None = None, *, max_chunk: int = 8, dtype=None, device=None
    ) -> Cache:
        """Preallocated caches for batch_size rows of up to max_seq_len tokens (default config.max_seq_len).

        Sliding-window layers get a ring of window + sink_tokens + max_chunk - 1 slots; a cached forward appends at
        most max_chunk tokens at a time (longer inputs are chunked, except the first prefill of a fresh cache).
        """
        p = self.tok_emb.weight
        dtype, device = dtype or p.dtype, device or p.device
        n = max_seq_len or self.config.max_seq_len
        layers = [blk.new_cache(batch_size, n, max_chunk, dtype, device) for blk in self.layers]
        return Cache(layers, torch.zeros(batch_size, dtype=torch.int32, device=device), max_chunk)

    # ---- forward ----

    def forward(self, ids: torch.Tensor, cache: Cache | None = None, *, last_only: bool = False) -> torch.Tensor:
        """Logits (B, T, V) for ids (B, T) int64 (B, 1, V with last_only).

        Without a cache, the T tokens are positions 0..T-1. With a cache they are appended to each row after its
        cache.seqlens tokens (rows may differ), the cache is updated and cache.seqlens advances by T.
        """
        B, T = ids.shape
        if cache is not None and not cache.fresh and T > cache.max_chunk:
            outs = []
            for s in range(0, T, cache.max_chunk):
                chunk = ids[:, s : s + cache.max_chunk]
                outs.append(self.forward(chunk, cache, last_only=last_only))
            return outs[-1] if last_only else torch.cat(outs, dim=1)
        if cache is None or cache.fresh:
            if self.pos_emb is not None and T > self.config.max_seq_len:
                raise ValueError(f"Transformer: {T} tokens exceed the {self.config.max_seq_len} learned positions")
            positions = torch.arange(T, device=ids.device)[None]  # (1, T)
            seqlens = None
        else:
            positions = cache.seqlens.to(torch.int64)[:, None] + torch.arange(T, device=ids.device)  # (B, T)
            seqlens = cache.seqlens + T  # (B,)
        rope = None
        if self.config.position == "rope":
            rope = rope_cos_sin(positions, self.config.rotary_dim, self.config.rope_theta)
        ctx = Context(positions, rope, seqlens, cache is None or cache.fresh)
        x = self.embed(ids, positions)  # (B, T, d)
        for i, block in enumerate(self.layers):
            x = block(x, ctx, None if cache is None else cache.layers[i])  # (B, T, d)
        if cache is not None:
            cache.seqlens.add_(T)
            cache.fresh = False
        if last_only:
            x = x[:, -1:]  # (B, 1, d) nanoGPT's trick: the head runs on the last position only
        return self.lm_head(self.norm(x))  # (B, T, V)

    def embed(self, ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        x = self.tok_emb(ids)  # (B, T, d) or (B, T, r)
        if self.tok_proj is not None:
            x = self.tok_proj(x)  # (B, T, d)
        if self.pos_emb is not None:
            x = x + self.pos_emb(positions)  # (B, T, d)
        elif self.config.position == "sinusoidal":
            x = x + sinusoidal_positions(positions, self.config.d_model).to(x.dtype)  # (B, T, d)
        return x

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())  # a tied head counts once (parameters() dedups)


def _init_weights(m: nn.Module) -> None:
    # GPT-2's init (normal 0.02, zero biases) for models built from a config; loading replaces all of it.
    if isinstance(m, (nn.Linear, nn.Embedding)):
        nn.init.normal_(m.weight, std=0.02)
    if isinstance(m, nn.Linear) and m.bias is not None:
        nn.init.zeros_(m.bias)
