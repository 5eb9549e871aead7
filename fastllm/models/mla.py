"""Multi-head latent attention (DeepSeek-V2 MLA) as the SWA-MLA seed runs it, with a latent KV cache.

Per token, `wkv_a` makes a latent c (R) and one rotary key k_pe (Dr) shared by all heads; c goes through a real
LayerNorm (with bias, eps 1e-5) and is expanded per head by `wkv_b` viewed as (H, Dn + Dv, R): rows :Dn give
k_nope = W_UK c, rows Dn: give v = W_UV c. Queries come from `wq` (or wq_b(LayerNorm(wq_a x)) with q_lora_rank > 0)
split into q_nope (Dn) and q_pe (Dr). Score = (q_nope . k_nope + q_pe . k_pe) * (Dn + Dr)^-0.5, causal.

RoPE here is interleaved with base 10000 hard-coded (upstream ignores rope_theta in its MLA layers). Keys are
rotated by their position. Quirk 2 (`mla_rope_by_head`, on for the seed's checkpoints): upstream hands q_pe to a
rope helper that expects (B, H, T, D) in the layout (B, T, H, D), so the query of head h is rotated by angle
h * theta_i at every position. The rope part of a score is then q_pe^T R(j - h) k_pe: it depends on the key's
absolute position, not on i - j. Rotating q_pe as if the head axis were the time axis reproduces it exactly.

Two paths, as in models/attention.py:
- prefill (no cache or ctx.fresh): decompress K (Dn + Dr) and V (Dv) per head and run
  `fastllm.kernels.sliding_window_attention` (full causal; q/k and v head dims differ), then fill the latent cache;
- decode: append [c, k_pe] to the latent cache and run `fastllm.kernels.mla_decode` in absorbed form,
  q = [q_nope W_UK (R), q_pe (Dr)] per head against the cached rows, o = o_latent W_UV^T (Dv), then wo.
  The cache holds R + Dr values per token for all heads (320 in the 262M model, against 2 H hd = 2048 for K/V).
"""

from __future__ import annotations

import torch
from torch import nn

import fastllm.kernels as K
from fastllm.models.attention import register_attention
from fastllm.models.config import ModelConfig
from fastllm.models.layers import LayerNorm, Linear, apply_rope, rope_cos_sin

MLA_ROPE_THETA = 10000.0  # upstream's MLA rope helper is built with its default base, whatever rope_theta says
LATENT_NORM_EPS = 1e-5  # nn.LayerNorm default, for kv_norm and q_norm


class LatentCache:
    """Latent KV cache kv (B, S, R + Dr) of one MLA layer: rows [c_kv (post-LayerNorm), k_pe (rotated by the
    absolute position)], slot == position (MLA layers attend to the whole prefix, so there is no ring)."""

    def __init__(self, kv: torch.Tensor):
        self.kv = kv

    @classmethod
    def empty(cls, batch: int, slots: int, width: int, *, dtype, device) -> LatentCache:
        return cls(torch.zeros(batch, slots, width, dtype=dtype, device=device))  # zeros: see KVCache.empty

    @property
    def slots(self) -> int:
        return self.kv.shape[1]

    def write(self, positions: torch.Tensor, kv: torch.Tensor) -> None:
        """Stores kv (B, T, R + Dr) at positions (B, T) or (1, T)."""
        B, T = kv.shape[:2]
        positions = positions.expand(B, T)
        rows = torch.arange(B, device=kv.device)[:, None].expand(B, T)  # (B, T)
        self.kv.index_put_((rows, positions), kv)

    def write_prefill(self, kv: torch.Tensor) -> None:
        T = kv.shape[1]
        if T > self.slots:
            raise ValueError(f"LatentCache: a prompt of {T} tokens does not fit the {self.slots} cache slots")
        self.kv[:, :T] = kv

    def row(self, b: int) -> LatentCache:
        return LatentCache(self.kv[b : b + 1])


@register_attention("mla")
class MLAttention(nn.Module):
    """Parameters (fastllm names = upstream names): wq | wq_a, q_norm, wq_b; wkv_a; kv_norm; wkv_b; wo. No biases
    except the LayerNorms."""

    keep_float = ("wkv_b",)  # fastllm.quant: up_proj reads its weight (absorbed into the queries)

    def __init__(self, config: ModelConfig, layer_idx: int):
        super().__init__()
        d, H = config.d_model, config.n_head
        self.n_head, self.R = H, config.kv_lora_rank
        self.Dn, self.Dr, self.Dv = config.qk_nope_head_dim, config.qk_rope_head_dim, config.v_head_dim
        self.rope_by_head = config.mla_rope_by_head
        self.q_lora_rank = config.q_lora_rank
        self.scale = (self.Dn + self.Dr) ** -0.5  # the un-absorbed q/k head dim, also in absorbed decode
        q_out = H * (self.Dn + self.Dr)
        if config.q_lora_rank:
            self.wq_a = Linear(d, config.q_lora_rank, bias=False)
            self.q_norm = LayerNorm(config.q_lora_rank, LATENT_NORM_EPS)
            self.wq_b = Linear(config.q_lora_rank, q_out, bias=False)
        else:
            self.wq = Linear(d, q_out, bias=False)
        self.wkv_a = Linear(d, self.R + self.Dr, bias=False)
        self.kv_norm = LayerNorm(self.R, LATENT_NORM_EPS)
        self.wkv_b = Linear(self.R, H * (self.Dn + self.Dv), bias=False)
        self.wo = Linear(H * self.Dv, d, bias=False)

    def new_cache(self, batch: int, max_seq_len: int, max_chunk: int, dtype, device) -> LatentCache:
        return LatentCache.empty(batch, max_seq_len, self.R + self.Dr, dtype=dtype, device=device)

    def queries(self, x: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """q_nope (B, T, H, Dn) and the rotated q_pe (B, T, H, Dr) for x (B, T, d) at positions (1 or B, T)."""
        B, T, _ = x.shape
        q = self.wq_b(self.q_norm(self.wq_a(x))) if self.q_lora_rank else self.wq(x)  # (B, T, H (Dn + Dr))
        q_nope, q_pe = q.view(B, T, self.n_head, self.Dn + self.Dr).split([self.Dn, self.Dr], dim=-1)
        if self.rope_by_head:
            # quirk 2: angles by head index h, the same at every t; (B, H, T, Dr) puts heads on apply_rope's time axis
            heads = torch.arange(self.n_head, device=x.device)[None]  # (1, H)
            cos, sin = rope_cos_sin(heads, self.Dr, MLA_ROPE_THETA)  # (1, H, Dr/2)
            q_pe = apply_rope(q_pe.transpose(1, 2), cos, sin, "interleaved").transpose(1, 2)  # (B, T, H, Dr)
        else:
            cos, sin = rope_cos_sin(positions, self.Dr, MLA_ROPE_THETA)  # (1 or B, T, Dr/2)
            q_pe = apply_rope(q_pe, cos, sin, "interleaved")  # (B, T, H, Dr)
        return q_nope, q_pe

    def latents(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """The cache rows [c_kv (R), k_pe (Dr)] (B, T, R + Dr) of x (B, T, d): normalised latent, rotated key."""
        c, k_pe = self.wkv_a(x).split([self.R, self.Dr], dim=-1)  # (B, T, R), (B, T, Dr)
        cos, sin = rope_cos_sin(positions, self.Dr, MLA_ROPE_THETA)  # (1 or B, T, Dr/2)
        k_pe = apply_rope(k_pe[:, :, None], cos, sin, "interleaved")[:, :, 0]  # (B, T, Dr)
        return torch.cat([self.kv_norm(c), k_pe], dim=-1)  # (B, T, R + Dr)

    def up_proj(self) -> tuple[torch.Tensor, torch.Tensor]:
        """W_UK (H, Dn, R) and W_UV (H, Dv, R): views of wkv_b, per head Dn rows of K then Dv rows of V."""
        w = self.wkv_b.weight.view(self.n_head, self.Dn + self.Dv, self.R)  # (H, Dn + Dv, R)
        return w[:, : self.Dn], w[:, self.Dn :]

    def forward(self, x: torch.Tensor, ctx, cache: LatentCache | None = None) -> torch.Tensor:
        B, T, _ = x.shape
        H = self.n_head
        q_nope, q_pe = self.queries(x, ctx.positions)  # (B, T, H, Dn), (B, T, H, Dr)
        kv = self.latents(x, ctx.positions)  # (B, T, R + Dr)
        if cache is None or ctx.fresh:
            o = self.attend_decompressed(q_nope, q_pe, kv)  # (B, T, H, Dv)
            if cache is not None:
                cache.write_prefill(kv)
        else:
            cache.write(ctx.positions, kv)
            o = self.attend_absorbed(q_nope, q_pe, cache.kv, ctx.seqlens)  # (B, T, H, Dv)
        return self.wo(o.reshape(B, T, H * self.Dv))

    def attend_decompressed(self, q_nope, q_pe, kv) -> torch.Tensor:
        """Causal attention of the T queries over their own T tokens with per-head K/V expanded from the latents.
        Prefill does T x T work per head, so expanding K/V once (T rows) is cheaper than absorbing into every query."""
        B, T, H, _ = q_nope.shape
        c, k_pe = kv.split([self.R, self.Dr], dim=-1)  # (B, T, R), (B, T, Dr)
        k_nope, v = self.wkv_b(c).view(B, T, H, self.Dn + self.Dv).split([self.Dn, self.Dv], dim=-1)
        k = torch.cat([k_nope, k_pe[:, :, None].expand(B, T, H, self.Dr)], dim=-1)  # (B, T, H, Dn + Dr)
        q = torch.cat([q_nope, q_pe], dim=-1)  # (B, T, H, Dn + Dr)
        return K.sliding_window_attention(q, k, v, None, softmax_scale=self.scale)  # (B, T, H, Dv)

    def absorbed_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """W_UK^T (H, R, Dn) contiguous and W_UV (H, Dv, R), the per-head weights of the absorbed decode as
        `K.grouped_linear` reads them (rows of contiguous columns). W_UK^T is a copy: under torch.compile made in the
        graph (freezing folds it into a constant), in eager made once per version of wkv_b."""
        w_uk, w_uv = self.up_proj()  # (H, Dn, R), (H, Dv, R)
        if torch.compiler.is_compiling() or (torch.is_grad_enabled() and w_uk.requires_grad):
            return w_uk.transpose(1, 2).contiguous(), w_uv
        w = self.wkv_b.weight
        key = (w.data_ptr(), w._version, w.dtype, w.device)
        cached = self.__dict__.get("_w_uk_t")
        if cached is None or cached[0] != key:
            cached = (key, w_uk.transpose(1, 2).contiguous())
            self.__dict__["_w_uk_t"] = cached
        return cached[1], w_uv

    def attend_absorbed(self, q_nope, q_pe, kv_cache, seqlens) -> torch.Tensor:
        """Decode: W_UK folded into the query, W_UV applied to the latent output; reads R + Dr values per cached
        token once for all heads instead of H (Dn + Dr + Dv)."""
        w_uk_t, w_uv = self.absorbed_weights()  # (H, R, Dn), (H, Dv, R)
        q_lat = _per_head(q_nope, w_uk_t)  # (B, T, H, R)
        q = torch.cat([q_lat, q_pe], dim=-1)  # (B, T, H, R + Dr)
        o_lat, _ = K.mla_decode(q, kv_cache, seqlens, kv_lora_rank=self.R, softmax_scale=self.scale)  # (B, T, H, R)
        return _per_head(o_lat, w_uv)  # (B, T, H, Dv)


def _per_head(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """x (..., H, K) times each head's w[h] (N, K)^T -> (..., H, N): fastllm's grouped GEMV (a bmm of one row per
    head, which inductor runs as one loop on one thread: ~0.8 ms a layer of the 262M model from DRAM, ~0.1 ms
    here); einsum where autograd records."""
    if torch.is_grad_enabled() and (x.requires_grad or w.requires_grad):
        return torch.einsum("...hk,hnk->...hn", x, w)
    return K.grouped_linear(x, w)
