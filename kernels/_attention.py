"""The attention functions of fastllm.kernels (re-exported there): sliding-window attention for training and prefill,
decode over a ring-buffer cache, and absorbed MLA decode over a latent cache. Layouts as in the package docstring."""

import math

import torch

from fastllm.kernels import _ops
from fastllm.kernels._checks import _last_dim_contiguous, _require
from fastllm.kernels.cpu import native


def _check_heads(name, q, k, v, alibi_slopes, rel_bias, window, sink_tokens):
    _require(
        q.dim() == 4 and k.dim() == 4 and v.dim() == 4,
        f"{name}: q, k, v must be 4-D (B, T, H, D), got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}",
    )
    _require(
        q.is_floating_point() and q.dtype == k.dtype == v.dtype,
        f"{name}: q, k, v must share one float dtype, got {q.dtype}, {k.dtype}, {v.dtype}",
    )
    _require(q.device == k.device == v.device, f"{name}: q, k, v on different devices")
    B, _, H, D = q.shape
    _require(
        k.shape[0] == B and v.shape[0] == B and k.shape[1] == v.shape[1] and k.shape[2] == v.shape[2],
        f"{name}: k {tuple(k.shape)} and v {tuple(v.shape)} must agree on (B={B}, S, Hkv)",
    )
    _require(H % k.shape[2] == 0, f"{name}: H={H} query heads is not a multiple of Hkv={k.shape[2]} kv heads")
    _require(k.shape[-1] == D, f"{name}: q and k head dims differ ({D} vs {k.shape[-1]})")
    _require(
        window is None or (isinstance(window, int) and not isinstance(window, bool) and window >= 1),
        f"{name}: window must be None or an int >= 1, got {window!r}",
    )
    _require(isinstance(sink_tokens, int) and sink_tokens >= 0, f"{name}: sink_tokens must be an int >= 0")
    if alibi_slopes is not None:
        _require(alibi_slopes.shape == (H,), f"{name}: alibi_slopes must be ({H},), got {tuple(alibi_slopes.shape)}")
    if rel_bias is not None:
        _require(
            rel_bias.dim() == 2 and rel_bias.shape[0] == H and rel_bias.shape[1] >= 1,
            f"{name}: rel_bias must be (H={H}, R>=1), got {tuple(rel_bias.shape)}",
        )


def sliding_window_attention(
    q, k, v, window=None, *, softmax_scale=None, alibi_slopes=None, rel_bias=None, sink_tokens=0, cu_seqlens=None
):
    """Causal sliding-window attention (prefill / training), differentiable in q, k, v and rel_bias.

    Args:
        q: (B, T, H, D) float. k: (B, S, Hkv, D), v: (B, S, Hkv, Dv), same dtype; T <= S, H % Hkv == 0, Dv may
            differ from D (MLA prefill uses D=192, Dv=128).
        window: None for full causal attention, or an int W >= 1 counting the token itself: the query at absolute
            position p sees keys j with p - W < j <= p (flash-attn's window_size=(W - 1, 0)).
        softmax_scale: multiplies q.k; default 1 / sqrt(D).
        alibi_slopes: (H,) float or None; adds -slope[h] * (p - j) to the scores of head h (no gradient).
        rel_bias: (H, R) float or None, a learned table; adds rel_bias[h, min(p - j, R - 1)] (clipped relative
            distance: T5-style buckets, llm-scratch tables, per-window tables). Gets a gradient.
        sink_tokens: n >= 0; the first n positions stay visible to every later query (attention sinks).
        cu_seqlens: (N + 1,) int32 or None. Packs N documents in one row: needs B == 1 and T == S, document i
            spans [cu_seqlens[i], cu_seqlens[i + 1]). No attention across documents; positions (window, ALiBi,
            rel_bias) restart at 0 in each document and its first sink_tokens tokens are its sinks.

    Queries are bottom-right aligned: query t sits at position p = S - T + t (decode chunks against a longer
    history). With S=8, T=4, W=3, sink_tokens=1 (x = seen, . = masked):

        key j:       0 1 2 3 4 5 6 7
        t=0 (p=4)    x . x x x . . .
        t=1 (p=5)    x . . x x x . .
        t=2 (p=6)    x . . . x x x .
        t=3 (p=7)    x . . . . x x x

    Returns o (B, T, H, Dv) in q's dtype. Cost on the CPU path is O(T * W) (query blocks against their key band).

    Example (GQA, 4 query heads share 1 kv head, window 256 with 4 sinks):
        >>> q, k, v = torch.randn(2, 100, 4, 64), torch.randn(2, 100, 1, 64), torch.randn(2, 100, 1, 64)
        >>> sliding_window_attention(q, k, v, 256, sink_tokens=4).shape
        torch.Size([2, 100, 4, 64])
    """
    _check_heads("sliding_window_attention", q, k, v, alibi_slopes, rel_bias, window, sink_tokens)
    T, S = q.shape[1], k.shape[1]
    _require(T <= S, f"sliding_window_attention: T={T} queries exceed S={S} keys (queries are bottom-right aligned)")
    if cu_seqlens is not None:
        _require(
            q.shape[0] == 1 and T == S,
            f"sliding_window_attention: cu_seqlens needs B == 1 and T == S, got B={q.shape[0]}, T={T}, S={S}",
        )
        _require(
            cu_seqlens.dim() == 1 and cu_seqlens.dtype in (torch.int32, torch.int64),
            "sliding_window_attention: cu_seqlens must be a 1-D int32 tensor",
        )
    scale = 1.0 / math.sqrt(q.shape[-1]) if softmax_scale is None else float(softmax_scale)
    o, _ = _ops.sliding_window_attention(
        _last_dim_contiguous(q),
        _last_dim_contiguous(k),
        _last_dim_contiguous(v),
        -1 if window is None else window,
        scale,
        alibi_slopes,
        rel_bias,
        sink_tokens,
        cu_seqlens,
    )
    return o


def swa_decode(
    q, k_cache, v_cache, cache_seqlens, window, *, softmax_scale=None, sink_tokens=0, alibi_slopes=None, rel_bias=None
):
    """Decode attention for Tq (1..8) new queries against a ring-buffer KV cache of C slots.

    Args:
        q: (B, Tq, H, D). k_cache: (B, C, Hkv, D), v_cache: (B, C, Hkv, Dv), same dtype as q.
        cache_seqlens: (B,) int, tokens seen by each row *including* the Tq new ones, which are already written to
            the cache; query i sits at position cache_seqlens - Tq + i (a query at a negative position outputs 0).
        window: W as in `sliding_window_attention` (counts the token itself); None only while nothing has wrapped
            (cache_seqlens <= C).
        softmax_scale, sink_tokens, alibi_slopes, rel_bias: as in `sliding_window_attention`.

    Ring layout: position s < sink_tokens stays in slot s; any later s lives in slot
    `sink_tokens + (s - sink_tokens) % (C - sink_tokens)`. With C >= W + sink_tokens + Tq - 1 every key that a
    query needs is still in its slot. Slots not yet written are never read (they may hold garbage or NaN).

        C=8, sink_tokens=2, 12 tokens seen:   slot  0  1  2  3  4  5  6  7
                                              pos   0  1  8  9 10 11  6  7

    Returns o (B, Tq, H, Dv) in q's dtype.
    """
    _check_heads("swa_decode", q, k_cache, v_cache, alibi_slopes, rel_bias, window, sink_tokens)
    B, C = q.shape[0], k_cache.shape[1]
    _require(
        cache_seqlens.shape == (B,) and not cache_seqlens.is_floating_point(),
        f"swa_decode: cache_seqlens must be an integer ({B},) tensor, got {tuple(cache_seqlens.shape)}",
    )
    _require(C > sink_tokens, f"swa_decode: C={C} slots leave no ring after sink_tokens={sink_tokens}")
    scale = 1.0 / math.sqrt(q.shape[-1]) if softmax_scale is None else float(softmax_scale)
    return native.op("swa_decode", q.device)(
        _last_dim_contiguous(q),
        _last_dim_contiguous(k_cache),
        _last_dim_contiguous(v_cache),
        cache_seqlens,
        -1 if window is None else window,
        scale,
        sink_tokens,
        alibi_slopes,
        rel_bias,
    )


def mla_decode(q, kv_cache, cache_seqlens, *, kv_lora_rank, softmax_scale, block_table=None):
    """Absorbed-weight multi-head latent attention (DeepSeek-V2 MLA) decode over a latent cache.

    The cache holds one row `[c_kv (R = kv_lora_rank), k_rope (Dr)]` per token, shared by all heads. Since
    k_nope[h] = W_UK[h] c_kv and v[h] = W_UV[h] c_kv, the absorbed query
    `q[h] = [W_UK[h]^T q_nope[h], q_rope[h]]` (R + Dr) scores directly against the cached rows, and the caller
    maps the latent output to V space: o[h] = W_UV[h] o_latent[h].

    Args:
        q: (B, Tq, H, R + Dr) absorbed queries. With Tq > 1 they are the last Tq of the cached tokens of their row,
            causal among themselves.
        kv_cache: contiguous (B, S, R + Dr), or with block_table a page pool (num_pages, page_size, R + Dr) where
            page_size is a multiple of 16 (64 is usual) and token s of row b is at
            kv_cache[block_table[b, s // page_size], s % page_size]. Same dtype as q.
        cache_seqlens: (B,) int32, cached tokens per row (including the Tq queries). Pages and slots past it are
            never read.
        kv_lora_rank: R. softmax_scale: required (usually 1 / sqrt(Dn + Dr) of the un-absorbed head dim).
        block_table: (B, max_pages) int32 or None.

    Returns (o_latent (B, Tq, H, R) in q's dtype, lse (B, Tq, H) fp32, the natural-log softmax normaliser). A row
    with cache_seqlens == 0 gives o_latent = 0 and lse = -inf.

    Example (R=512, Dr=64, pages of 64 tokens, row 0 holds 100 tokens in pages 3 and 0):
        >>> pool = torch.randn(8, 64, 576)
        >>> table = torch.tensor([[3, 0]], dtype=torch.int32)
        >>> q = torch.randn(1, 1, 16, 576)
        >>> o, lse = mla_decode(q, pool, torch.tensor([100], dtype=torch.int32), kv_lora_rank=512,
        ...                     softmax_scale=192**-0.5, block_table=table)
        >>> o.shape, lse.shape
        (torch.Size([1, 1, 16, 512]), torch.Size([1, 1, 16]))
    """
    _require(
        q.dim() == 4 and kv_cache.dim() == 3 and q.shape[-1] == kv_cache.shape[-1],
        f"mla_decode: q must be (B, Tq, H, R + Dr) and kv_cache (.., .., R + Dr), got {tuple(q.shape)} and "
        f"{tuple(kv_cache.shape)}",
    )
    _require(
        q.is_floating_point() and q.dtype == kv_cache.dtype and q.device == kv_cache.device,
        f"mla_decode: q and kv_cache must share dtype and device, got {q.dtype}, {kv_cache.dtype}",
    )
    _require(0 < kv_lora_rank <= q.shape[-1], f"mla_decode: kv_lora_rank={kv_lora_rank} outside (0, {q.shape[-1]}]")
    B = q.shape[0]
    _require(
        cache_seqlens.shape == (B,) and not cache_seqlens.is_floating_point(),
        f"mla_decode: cache_seqlens must be an integer ({B},) tensor, got {tuple(cache_seqlens.shape)}",
    )
    if block_table is None:
        _require(kv_cache.shape[0] == B, f"mla_decode: contiguous kv_cache must have B={B} rows")
    else:
        _require(
            block_table.dim() == 2 and block_table.shape[0] == B and not block_table.is_floating_point(),
            f"mla_decode: block_table must be an integer (B={B}, max_pages) tensor",
        )
        _require(kv_cache.shape[1] % 16 == 0, f"mla_decode: page_size={kv_cache.shape[1]} is not a multiple of 16")
    return native.op("mla_decode", q.device)(
        _last_dim_contiguous(q),
        _last_dim_contiguous(kv_cache),
        cache_seqlens,
        kv_lora_rank,
        float(softmax_scale),
        block_table,
    )
