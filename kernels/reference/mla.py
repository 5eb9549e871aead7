"""Eager reference for absorbed-weight MLA decode over a latent cache, and the naive decompress-K/V form.

The cache stores one row `[c_kv (R), k_rope (Dr)]` per token, shared by all heads. With the up-projections
k_nope[h] = W_UK[h] c and v[h] = W_UV[h] c, a head's score is q_nope[h].k_nope[h] + q_rope[h].k_rope
= (W_UK[h]^T q_nope[h]).c + q_rope[h].k_rope, so the absorbed query q = [W_UK^T q_nope, q_rope] (R + Dr) scores
directly against the cached row, and the output o_latent = softmax . c (R) is mapped to V space by the caller
(o[h] = W_UV[h] o_latent[h]). `mla_decode_naive` decompresses K and V per head instead; tests use it to prove the
absorbed form right.

Only the first cache_seqlens[b] tokens of a row are ever gathered: pages past them (and the tail of the last page)
are never read, so stale or NaN data there cannot leak.
"""

import torch

_NEG_INF = float("-inf")


def gather_tokens(kv_cache: torch.Tensor, b: int, n: int, block_table: torch.Tensor | None) -> torch.Tensor:
    """The n cached rows of batch row b, (n, R + Dr), from a contiguous (B, S, .) cache or a paged pool."""
    if block_table is None:
        if n > kv_cache.shape[1]:
            raise ValueError(f"mla_decode: cache_seqlens[{b}] = {n} exceeds the cache length {kv_cache.shape[1]}")
        return kv_cache[b, :n]  # (n, R + Dr)
    page_size = kv_cache.shape[1]
    n_pages = -(-n // page_size)
    if n_pages > block_table.shape[1]:
        raise ValueError(
            f"mla_decode: cache_seqlens[{b}] = {n} needs {n_pages} pages, block_table has {block_table.shape[1]}"
        )
    pages = block_table[b, :n_pages].to(torch.int64)  # (n_pages,)
    if n_pages and (int(pages.min()) < 0 or int(pages.max()) >= kv_cache.shape[0]):
        raise ValueError(
            f"mla_decode: block_table[{b}] names pages outside the pool of {kv_cache.shape[0]}: {pages.tolist()}"
        )
    return kv_cache[pages].reshape(n_pages * page_size, -1)[:n]  # (n, R + Dr)


def _causal_softmax(s: torch.Tensor, n: int, Tq: int):
    """Softmax of scores s (Tq, H, n) where query i sits at position n - Tq + i; lse (Tq, H) is -inf if nothing seen."""
    qpos = n - Tq + torch.arange(Tq, device=s.device)  # (Tq,)
    mask = torch.arange(n, device=s.device)[None, :] <= qpos[:, None]  # (Tq, n)
    s = s.masked_fill(~mask[:, None, :], _NEG_INF)  # (Tq, H, n)
    m = s.amax(dim=-1, keepdim=True)  # (Tq, H, 1)
    m = torch.where(m == _NEG_INF, torch.zeros_like(m), m)
    e = torch.exp(s - m)  # (Tq, H, n)
    denom = e.sum(dim=-1, keepdim=True)  # (Tq, H, 1)
    p = e / torch.where(denom == 0, torch.ones_like(denom), denom)  # (Tq, H, n)
    return p, (m + denom.log()).squeeze(-1)


def _check_seqlens(cache_seqlens: torch.Tensor) -> list[int]:
    lens = cache_seqlens.tolist()
    if any(n < 0 for n in lens):
        raise ValueError(f"mla_decode: cache_seqlens must be >= 0, got {lens}")
    return lens


def mla_decode(q, kv_cache, cache_seqlens, *, kv_lora_rank, softmax_scale, block_table=None):
    """Reference of `fastllm.kernels.mla_decode`: (o_latent (B, Tq, H, R) in q's dtype, lse (B, Tq, H) fp32)."""
    B, Tq, H, Dqk = q.shape
    R = kv_lora_rank
    dt = torch.float64 if q.dtype == torch.float64 else torch.float32
    o = torch.zeros(B, Tq, H, R, dtype=dt, device=q.device)  # (B, Tq, H, R)
    lse = torch.full((B, Tq, H), _NEG_INF, dtype=torch.float32, device=q.device)  # (B, Tq, H)
    for b, n in enumerate(_check_seqlens(cache_seqlens)):
        if n == 0:
            continue
        kv = gather_tokens(kv_cache, b, n, block_table).to(dt)  # (n, R + Dr) = [c_kv, k_rope]
        s = (q[b].to(dt).reshape(Tq * H, Dqk) @ kv.T).view(Tq, H, n) * softmax_scale  # (Tq, H, n)
        p, lse_b = _causal_softmax(s, n, Tq)  # (Tq, H, n), (Tq, H)
        o[b] = (p.view(Tq * H, n) @ kv[:, :R]).view(Tq, H, R)  # (Tq, H, R)
        lse[b] = lse_b.float()
    return o.to(q.dtype), lse


def mla_decode_naive(q_nope, q_rope, kv_cache, cache_seqlens, *, w_uk, w_uv, softmax_scale, block_table=None):
    """Decompress-K/V MLA decode, for tests only: (o (B, Tq, H, Dv) in q's dtype, lse (B, Tq, H) fp32).

    q_nope (B, Tq, H, Dn) and q_rope (B, Tq, H, Dr) are the un-absorbed queries; w_uk (H, Dn, R) and w_uv (H, Dv, R)
    are the per-head up-projections of the latent c_kv (R) to k_nope and v. Same cache layouts as `mla_decode`.
    """
    B, Tq, H, _ = q_nope.shape
    R, Dv = w_uk.shape[-1], w_uv.shape[1]
    dt = torch.float64 if q_nope.dtype == torch.float64 else torch.float32
    o = torch.zeros(B, Tq, H, Dv, dtype=dt, device=q_nope.device)  # (B, Tq, H, Dv)
    lse = torch.full((B, Tq, H), _NEG_INF, dtype=torch.float32, device=q_nope.device)  # (B, Tq, H)
    qf = torch.cat([q_nope, q_rope], dim=-1).to(dt)  # (B, Tq, H, Dn + Dr)
    for b, n in enumerate(_check_seqlens(cache_seqlens)):
        if n == 0:
            continue
        kv = gather_tokens(kv_cache, b, n, block_table).to(dt)  # (n, R + Dr)
        c, k_rope = kv[:, :R], kv[:, R:]  # (n, R), (n, Dr)
        k_nope = torch.einsum("hdr,nr->nhd", w_uk.to(dt), c)  # (n, H, Dn)
        v = torch.einsum("hvr,nr->nhv", w_uv.to(dt), c)  # (n, H, Dv)
        k = torch.cat([k_nope, k_rope[:, None, :].expand(n, H, k_rope.shape[-1])], dim=-1)  # (n, H, Dn + Dr)
        s = torch.einsum("thd,nhd->thn", qf[b], k) * softmax_scale  # (Tq, H, n)
        p, lse_b = _causal_softmax(s, n, Tq)  # (Tq, H, n)
        o[b] = torch.einsum("thn,nhv->thv", p, v)  # (Tq, H, Dv)
        lse[b] = lse_b.float()
    return o.to(q_nope.dtype), lse
