"""Eager reference for sliding-window attention (prefill, forward and backward) and ring-buffer decode.

Torch only, fp32 accumulation (fp64 inputs stay fp64), outputs in the input dtype. This is the CPU/MPS path and
the oracle the Triton kernels are tested against. Semantics are documented on the public functions in
`fastllm.kernels`; in short, query t of T sits at absolute position p = S - T + t (bottom-right alignment) and sees
key j iff `0 <= p - j < window` or `j < sink_tokens` (and j <= p).

Cost. Queries are processed in blocks of `block_q`; a block [p0, p1) only ever touches its key band
[p0 - window + 1, p1) plus the sink keys, so prefill costs O(T * (W + block_q)) time and O(block_q * (W + block_q))
extra memory per head, never a T x S mask. `window=None` is full causal and still skips the future key blocks
(T * S / 2 scores in all).
"""

import math

import torch
import torch.nn.functional as F

_NEG_INF = float("-inf")


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _block_size(window: int | None, T: int) -> int:
    # Enough queries per block to amortise the Python loop, few enough that the band stays ~W wide.
    if window is None:
        return min(T, 128)
    return min(T, max(32, min(128, 1 << max(0, window - 1).bit_length())))


def _bias_and_mask(qpos, kpos, window, sink_tokens, alibi_slopes, rel_bias, dtype):
    """Additive bias (H, Tq, Sk) or None, and the visibility mask (Tq, Sk), for query/key positions."""
    dist = qpos[:, None] - kpos[None, :]  # (Tq, Sk) int64, p - j
    mask = dist >= 0  # (Tq, Sk) causal
    if window is not None:
        mask &= (dist < window) | (kpos < sink_tokens)[None, :]  # (Tq, Sk)
    bias = None
    if alibi_slopes is not None:
        bias = -alibi_slopes.to(dtype)[:, None, None] * dist.to(dtype)  # (H, Tq, Sk)
    if rel_bias is not None:
        rb = rel_bias.to(dtype)[:, dist.clamp(0, rel_bias.shape[1] - 1)]  # (H, Tq, Sk)
        bias = rb if bias is None else bias + rb
    return bias, mask, dist


def _safe_softmax(s: torch.Tensor):
    """Softmax over the last dim that gives 0 (not NaN) on fully masked rows; also returns the natural-log LSE."""
    m = s.amax(dim=-1, keepdim=True).detach()  # (..., 1)
    m = torch.where(m == _NEG_INF, torch.zeros_like(m), m)  # (..., 1) a fully masked row keeps exp(-inf) = 0
    e = torch.exp(s - m)  # (..., Sk)
    denom = e.sum(dim=-1, keepdim=True)  # (..., 1)
    p = e / torch.where(denom == 0, torch.ones_like(denom), denom)  # (..., Sk)
    return p, (m + denom.log()).squeeze(-1)  # lse = -inf on fully masked rows


def _band(t0, t1, T, S, window, sink_tokens, device):
    """Key positions (Sk,) seen by query block [t0, t1): the sinks before the band, then the band itself."""
    p0, p1 = S - T + t0, S - T + t1
    lo = 0 if window is None else max(0, p0 - window + 1)
    ns = min(sink_tokens, lo)
    qpos = torch.arange(p0, p1, device=device)  # (Tb,)
    kpos = torch.cat([torch.arange(ns, device=device), torch.arange(lo, p1, device=device)])  # (Sk,)
    return qpos, kpos, lo, ns, p1


def _gather_band(x, lo, ns, p1):
    # x (B, Hkv, S, D) -> (B, Hkv, Sk, D): sink rows [0, ns) followed by band rows [lo, p1)
    return torch.cat([x[:, :, :ns], x[:, :, lo:p1]], dim=2) if ns else x[:, :, lo:p1]


def _scores(qb, kb, qpos, kpos, G, scale, window, sink_tokens, alibi_slopes, rel_bias):
    """Biased, masked scores (B, Hkv, Tb, G, Sk) of one query block against its band."""
    B, Hkv, rows, _ = qb.shape
    Tb, Sk = qpos.numel(), kpos.numel()
    s = (qb @ kb.transpose(-1, -2)).view(B, Hkv, Tb, G, Sk) * scale  # (B, Hkv, Tb, G, Sk)
    bias, mask, dist = _bias_and_mask(qpos, kpos, window, sink_tokens, alibi_slopes, rel_bias, qb.dtype)
    if bias is not None:
        s = s + bias.view(Hkv, G, Tb, Sk).transpose(1, 2)  # (B, Hkv, Tb, G, Sk)
    return s.masked_fill(~mask[:, None, :], _NEG_INF), dist


def _heads_first(q, k, v, dtype):
    B, T, H, D = q.shape
    Hkv = k.shape[2]
    qh = q.to(dtype).view(B, T, Hkv, H // Hkv, D).transpose(1, 2).contiguous()  # (B, Hkv, T, G, D)
    kh = k.to(dtype).transpose(1, 2).contiguous()  # (B, Hkv, S, D)
    vh = v.to(dtype).transpose(1, 2).contiguous()  # (B, Hkv, S, Dv)
    return qh, kh, vh


def _fwd_one(q, k, v, window, scale, alibi_slopes, rel_bias, sink_tokens, block_q):
    """One packed-free sequence: o (B, T, H, Dv) in the compute dtype and lse (B, H, T) fp32."""
    B, T, H, _ = q.shape
    S, Hkv, Dv = k.shape[1], k.shape[2], v.shape[-1]
    G = H // Hkv
    if T == 0:
        return q.new_zeros(B, 0, H, Dv, dtype=_compute_dtype(q)), q.new_zeros(B, H, 0, dtype=torch.float32)
    qh, kh, vh = _heads_first(q, k, v, _compute_dtype(q))
    outs, lses = [], []
    for t0 in range(0, T, block_q):
        t1 = min(t0 + block_q, T)
        qpos, kpos, lo, ns, p1 = _band(t0, t1, T, S, window, sink_tokens, q.device)
        qb = qh[:, :, t0:t1].reshape(B, Hkv, (t1 - t0) * G, -1)  # (B, Hkv, Tb*G, D)
        s, _ = _scores(
            qb, _gather_band(kh, lo, ns, p1), qpos, kpos, G, scale, window, sink_tokens, alibi_slopes, rel_bias
        )  # (B, Hkv, Tb, G, Sk)
        p, lse = _safe_softmax(s)  # (B, Hkv, Tb, G, Sk), (B, Hkv, Tb, G)
        ob = p.flatten(2, 3) @ _gather_band(vh, lo, ns, p1)  # (B, Hkv, Tb*G, Dv)
        outs.append(ob.view(B, Hkv, t1 - t0, G, Dv))
        lses.append(lse)
    o = torch.cat(outs, dim=2).permute(0, 2, 1, 3, 4).reshape(B, T, H, Dv)  # (B, T, H, Dv)
    lse = torch.cat(lses, dim=2).permute(0, 1, 3, 2).reshape(B, H, T)  # (B, H, T)
    return o, lse.float()


def _bwd_one(do, q, k, v, window, scale, alibi_slopes, rel_bias, sink_tokens, block_q):
    """Gradients of one packed-free sequence, recomputing each block's softmax in the compute dtype.

    With s = scale * q.k + bias and P = softmax(s): dV = P^T dO, dP = dO V^T, dS = P * (dP - rowsum(dO * O)),
    dQ = scale * dS K, dK = scale * dS^T Q, d rel_bias[h, r] = sum of dS[h] over the (t, j) whose clipped distance is r.
    """
    B, T, H, D = q.shape
    S, Hkv, Dv = k.shape[1], k.shape[2], v.shape[-1]
    G = H // Hkv
    dt = _compute_dtype(q)
    qh, kh, vh = _heads_first(q, k, v, dt)
    doh = do.to(dt).view(B, T, Hkv, G, Dv).transpose(1, 2).contiguous()  # (B, Hkv, T, G, Dv)
    dq, dk, dv = torch.zeros_like(qh), torch.zeros_like(kh), torch.zeros_like(vh)
    drel = None if rel_bias is None else torch.zeros(rel_bias.shape, dtype=dt, device=q.device)  # (H, R)
    for t0 in range(0, T, block_q):
        t1 = min(t0 + block_q, T)
        rows = (t1 - t0) * G
        qpos, kpos, lo, ns, p1 = _band(t0, t1, T, S, window, sink_tokens, q.device)
        qb = qh[:, :, t0:t1].reshape(B, Hkv, rows, D)  # (B, Hkv, Tb*G, D)
        kb, vb = _gather_band(kh, lo, ns, p1), _gather_band(vh, lo, ns, p1)  # (B, Hkv, Sk, D), (B, Hkv, Sk, Dv)
        s, dist = _scores(qb, kb, qpos, kpos, G, scale, window, sink_tokens, alibi_slopes, rel_bias)
        p = _safe_softmax(s)[0].flatten(2, 3)  # (B, Hkv, Tb*G, Sk)
        dob = doh[:, :, t0:t1].reshape(B, Hkv, rows, Dv)  # (B, Hkv, Tb*G, Dv)
        ob = p @ vb  # (B, Hkv, Tb*G, Dv)
        ds = p * (dob @ vb.transpose(-1, -2) - (dob * ob).sum(-1, keepdim=True))  # (B, Hkv, Tb*G, Sk)
        dq[:, :, t0:t1] = (ds @ kb * scale).view(B, Hkv, t1 - t0, G, D)
        dkb, dvb = ds.transpose(-1, -2) @ qb * scale, p.transpose(-1, -2) @ dob  # (B, Hkv, Sk, D), (.., Dv)
        dk[:, :, lo:p1] += dkb[:, :, ns:]
        dv[:, :, lo:p1] += dvb[:, :, ns:]
        if ns:
            dk[:, :, :ns] += dkb[:, :, :ns]
            dv[:, :, :ns] += dvb[:, :, :ns]
        if drel is not None:
            dsh = ds.view(B, Hkv, t1 - t0, G, -1).sum(0).transpose(1, 2).reshape(H, -1)  # (H, Tb*Sk)
            drel.index_add_(1, dist.clamp(0, rel_bias.shape[1] - 1).flatten(), dsh)
    dq = dq.transpose(1, 2).reshape(B, T, H, D)  # (B, T, H, D)
    return dq, dk.transpose(1, 2), dv.transpose(1, 2), drel


def _documents(cu_seqlens: torch.Tensor | None, T: int) -> list[tuple[int, int]]:
    if cu_seqlens is None:
        return [(0, T)]
    cu = cu_seqlens.tolist()
    if cu_seqlens.dim() != 1 or len(cu) < 2 or cu[0] != 0 or cu[-1] != T or any(b < a for a, b in zip(cu, cu[1:])):
        raise ValueError(f"cu_seqlens must be a non-decreasing (N+1,) tensor from 0 to T={T}, got {cu}")
    return [(a, b) for a, b in zip(cu, cu[1:]) if b > a]


def sliding_window_attention(
    q,
    k,
    v,
    window=None,
    *,
    softmax_scale=None,
    alibi_slopes=None,
    rel_bias=None,
    sink_tokens=0,
    cu_seqlens=None,
    return_lse=False,
    block_q=None,
):
    """Reference of `fastllm.kernels.sliding_window_attention` (same arguments; differentiable through autograd).

    Extra keywords: `return_lse=True` also returns the natural-log softmax normaliser lse (B, H, T) fp32 (-inf on a
    row that sees no key); `block_q` sets the query block size (a tuning and testing knob).
    """
    B, T, H, D = q.shape
    scale = 1.0 / math.sqrt(D) if softmax_scale is None else softmax_scale
    docs = _documents(cu_seqlens, T)
    outs, lses = [], []
    for a, b in docs:
        n = b - a
        bq = block_q or _block_size(window, n)
        if cu_seqlens is None:
            o, lse = _fwd_one(q, k, v, window, scale, alibi_slopes, rel_bias, sink_tokens, bq)
        else:  # one document: positions restart at 0, its first tokens are its sinks
            o, lse = _fwd_one(q[:, a:b], k[:, a:b], v[:, a:b], window, scale, alibi_slopes, rel_bias, sink_tokens, bq)
        outs.append(o)
        lses.append(lse)
    o = (torch.cat(outs, dim=1) if len(outs) > 1 else outs[0]).to(q.dtype)  # (B, T, H, Dv)
    if not return_lse:
        return o
    return o, torch.cat(lses, dim=2) if len(lses) > 1 else lses[0]  # (B, H, T)


def sliding_window_attention_backward(
    do,
    q,
    k,
    v,
    o=None,
    lse=None,
    window=None,
    *,
    softmax_scale=None,
    alibi_slopes=None,
    rel_bias=None,
    sink_tokens=0,
    cu_seqlens=None,
    block_q=None,
):
    """Explicit backward of `sliding_window_attention`: (dq, dk, dv, drel_bias or None) in the input dtypes.

    `o` and `lse` are the forward outputs a fused kernel would reuse; the reference ignores them and recomputes each
    block's softmax in fp32 (more accurate than reusing a low-precision `o`). ALiBi slopes get no gradient.
    """
    B, T, H, D = q.shape
    scale = 1.0 / math.sqrt(D) if softmax_scale is None else softmax_scale
    grads = []
    for a, b in _documents(cu_seqlens, T):
        bq = block_q or _block_size(window, b - a)
        sl = slice(None) if cu_seqlens is None else slice(a, b)
        grads.append(
            _bwd_one(do[:, sl], q[:, sl], k[:, sl], v[:, sl], window, scale, alibi_slopes, rel_bias, sink_tokens, bq)
        )
    dq, dk, dv = (torch.cat([g[i] for g in grads], dim=1) for i in range(3))
    drel = None if rel_bias is None else sum(g[3] for g in grads).to(rel_bias.dtype)
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), drel


def ring_slot_positions(cache_seqlens: torch.Tensor, C: int, sink_tokens: int) -> torch.Tensor:
    """Absolute position held by each slot of a ring-buffer cache (B, C) int64, -1 where the slot is still empty.

    Positions s < sink_tokens live in slot s; later s in slot sink + (s - sink) % (C - sink), so a ring slot holds the
    newest position that maps to it.
    """
    L = cache_seqlens.to(torch.int64)[:, None]  # (B, 1)
    c = torch.arange(C, device=cache_seqlens.device)[None, :]  # (1, C)
    ring = C - sink_tokens
    r = (c - sink_tokens).clamp(min=0)  # (1, C) offset inside the ring
    newest = sink_tokens + r + torch.div(L - 1 - sink_tokens - r, max(ring, 1), rounding_mode="floor") * ring  # (B, C)
    is_sink = (c < sink_tokens).expand_as(newest)  # (B, C)
    pos = torch.where(is_sink, c.expand_as(newest), newest)  # (B, C)
    valid = (pos < L) & (is_sink | (newest >= sink_tokens))  # (B, C) a ring slot is empty until L > sink + r
    return torch.where(valid, pos, torch.full_like(pos, -1))  # (B, C)


def swa_decode(
    q, k_cache, v_cache, cache_seqlens, window, *, softmax_scale=None, sink_tokens=0, alibi_slopes=None, rel_bias=None
):
    """Reference of `fastllm.kernels.swa_decode`: Tq new queries against a ring-buffer KV cache, O(C) per query."""
    B, Tq, H, D = q.shape
    C, Hkv, Dv = k_cache.shape[1], k_cache.shape[2], v_cache.shape[-1]
    G = H // Hkv
    L = cache_seqlens.to(device=q.device, dtype=torch.int64)  # (B,)
    max_len = int(L.max()) if B else 0
    if B and int(L.min()) < 0:
        raise ValueError(f"swa_decode: cache_seqlens must be >= 0, got {cache_seqlens.tolist()}")
    if max_len > C and (window is None or C < window + sink_tokens + Tq - 1):
        need = "every token cached" if window is None else "C >= window + sink_tokens + Tq - 1"
        raise ValueError(
            f"swa_decode: cache_seqlens reaches {max_len} > C={C} slots (the ring has wrapped), which "
            f"needs {need} (window={window}, sink_tokens={sink_tokens}, Tq={Tq})"
        )
    dt = _compute_dtype(q)
    scale = 1.0 / math.sqrt(D) if softmax_scale is None else softmax_scale
    min_len = int(L.min()) if B else 0
    if Tq == 1 and alibi_slopes is None and rel_bias is None and 1 <= min_len and max_len <= min(C, window or C):
        # The common decode step: the cache has not wrapped and every cached key is inside the query's window, so
        # row b attends to slots [0, L_b) in position order. One SDPA call (per-head contiguous K/V views), with a
        # key-length mask only when the rows differ (tests/test_reference.py: test_decode_fast_path_matches_general).
        kh = k_cache[:, :max_len].transpose(1, 2)  # (B, Hkv, max_len, D)
        vh = v_cache[:, :max_len].transpose(1, 2)  # (B, Hkv, max_len, Dv)
        mask = None
        if min_len < max_len:  # shorter rows: mask their unwritten slots, and zero them (they may hold NaN)
            mask = (torch.arange(max_len, device=q.device) < L[:, None])[:, None, None, :]  # (B, 1, 1, max_len)
            kh, vh = (torch.where(mask.transpose(-1, -2), x, 0.0) for x in (kh, vh))
        o = F.scaled_dot_product_attention(
            q.to(dt).transpose(1, 2), kh.to(dt), vh.to(dt), attn_mask=mask, scale=scale, enable_gqa=G > 1
        )  # (B, H, 1, Dv)
        return o.transpose(1, 2).to(q.dtype)  # (B, 1, H, Dv)
    # Slots at or past the longest row's length were never written in any row: leave them out (cheap views).
    kpos = ring_slot_positions(L, C, sink_tokens)  # (B, C), -1 = empty slot
    C = max(1, min(C, max_len))
    kpos = kpos[:, :C]  # (B, C)
    qpos = L[:, None] - Tq + torch.arange(Tq, device=q.device)[None, :]  # (B, Tq)
    dist = qpos[:, :, None] - kpos[:, None, :]  # (B, Tq, C)
    mask = (kpos >= 0)[:, None, :] & (dist >= 0)  # (B, Tq, C)
    if window is not None:
        mask &= (dist < window) | (kpos < sink_tokens)[:, None, :]  # (B, Tq, C)
    qh = q.to(dt).view(B, Tq, Hkv, G, D).transpose(1, 2).reshape(B, Hkv, Tq * G, D)  # (B, Hkv, Tq*G, D)
    kh = k_cache[:, :C].to(dt).transpose(1, 2)  # (B, Hkv, C, D)
    vh = v_cache[:, :C].to(dt).transpose(1, 2)  # (B, Hkv, C, Dv)
    if min_len < C:  # a shorter row has unwritten slots, which may hold NaN: zero them so
        vh = torch.where((kpos >= 0)[:, None, :, None], vh, 0.0)  # that 0 * NaN cannot leak through p @ v
    s = (qh @ kh.transpose(-1, -2)).view(B, Hkv, Tq, G, C) * scale  # (B, Hkv, Tq, G, C)
    bias = None
    if alibi_slopes is not None:
        bias = -alibi_slopes.to(dt)[None, :, None, None] * dist.to(dt)[:, None]  # (B, H, Tq, C)
    if rel_bias is not None:
        rb = rel_bias.to(dt)[:, dist.clamp(0, rel_bias.shape[1] - 1)].transpose(0, 1)  # (B, H, Tq, C)
        bias = rb if bias is None else bias + rb
    if bias is not None:
        s = s + bias.reshape(B, Hkv, G, Tq, C).transpose(2, 3)  # (B, Hkv, Tq, G, C)
    s = s.masked_fill(~mask[:, None, :, None, :], _NEG_INF)  # (B, Hkv, Tq, G, C)
    p, _ = _safe_softmax(s)  # (B, Hkv, Tq, G, C)
    o = p.flatten(2, 3) @ vh  # (B, Hkv, Tq*G, Dv)
    return o.view(B, Hkv, Tq, G, Dv).transpose(1, 2).reshape(B, Tq, H, Dv).to(q.dtype)  # (B, Tq, H, Dv)
