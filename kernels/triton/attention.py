"""Triton sliding-window attention for prefill and training: FlashAttention-2 forward and backward.

Semantics are those of `fastllm.kernels.sliding_window_attention` (the oracle is
`fastllm.kernels.reference.attention`): query row t of a document sits at key index t + shift (bottom-right
alignment, shift = S - T; 0 inside a cu_seqlens document) and sees key j of its document iff
`0 <= dist < window or j is one of the document's first sink_tokens keys`, with dist = t + shift - j. Scores are
`softmax_scale * q.k - alibi_slope[h] * dist + rel_bias[h, min(dist, R - 1)]`.

Kernels (all programs are independent; no atomics anywhere, so every output is bitwise deterministic):

- `_swa_fwd_kernel`, grid (query blocks, H, B): online softmax in base 2 with fp32 accumulators, writes o and the
  natural-log lse. A query block [t0, t1) visits only the key blocks of its band [t0 + shift - W + 1, t1 + shift)
  and, before the band, the sink keys: O(T * (W + BLOCK_M + sinks)) work instead of O(T * S).
- `_swa_bwd_delta_kernel`, grid (row blocks, H, B): delta = rowsum(do * o) in fp32, the softmax-gradient term.
- `_swa_bwd_dkdv_kernel`, grid (key blocks, Hkv, B): dk and dv of one key block, summed over the H / Hkv query heads
  of its kv head inside the program (GQA without atomics). It visits the query blocks whose windows contain one of
  its keys, [j0 - shift, j1 + W - 1 - shift), except the block(s) holding sink keys, which every later query sees:
  those iterate to the end of the document, like the first key block of causal FlashAttention-2.
- `_swa_bwd_dq_kernel`, grid (query blocks, H, B): dq over the same key tiles as the forward. With rel_bias it also
  accumulates d rel_bias: each program owns one row of a zeroed (programs, R) fp32 buffer; a tile's exact-distance
  bins (dist < R - 1) are its diagonal sums (a gather shears the tile so that a column sum gives them) added into
  that row, the clipped bin R - 1 a plain sum. The launcher then sums the rows with torch: deterministic at the
  cost of programs * R * 4 bytes (e.g. 8 MB for B * H = 64, T = 4096, BLOCK_M = 64, R = 512).

Compiled configurations. Runtime arguments: sizes, strides, window, sinks and the ALiBi and cu_seqlens flags (uniform
branches; value-1 specialisation is off for them, so a window or group of 1 compiles nothing new). Constexprs: the
tiles, BLOCK_D and BLOCK_DV, HAS_REL (the rel_bias gather and the d rel_bias accumulation cost enough registers that
compiling them out keeps the common case spill-free) and DOT_IN_FP32 (True only under the interpreter, whose bf16
`tl.dot` is wrong; never compiled for a GPU). Both head dims are padded to one power of two >= max(D, Dv, 32), except
that 16-bit inputs with Dv <= 128 and BLOCK_D = 256 (MLA prefill, 192 / 128) keep BLOCK_DV = 128 (`head_blocks`): five
head-dim classes for fp16 / bf16, four for fp32. Tiles come from `_TILES` by (kernel, fp32 or 16-bit, BLOCK_D,
HAS_REL). In all (2 x 5 + 4) x 2 x 3 attention kernels + 12 delta kernels = 96 configurations, listed by
`aot_configs()`. fp32 inputs use 3xTF32 dots (fp32-level accuracy on tensor cores, at a register cost that forces
small fp32 tiles).
"""

import inspect
import math
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from fastllm.kernels._checks import _last_dim_contiguous
from fastllm.kernels._dispatch import interpret_mode, register_triton
from fastllm.kernels.triton._aot import AOTConfig

LOG2E: tl.constexpr = tl.constexpr(1.4426950408889634)
LN2: tl.constexpr = tl.constexpr(0.6931471805599453)
_INT32_MAX = 2**31 - 1
_MAX_HEAD_DIM = 256

# Runtime int arguments whose value 1 is common (window, sinks, G, flags...): Triton would otherwise compile a
# separate specialisation for each argument that happens to equal 1. Head dims and strides keep Triton's
# divisibility-by-16 specialisation: it is what lets the masked head-dim loads vectorise and pipeline.
_RUNTIME_INTS = ("T", "S", "H", "G", "R", "window", "sinks", "has_alibi", "varlen")


# ---- device helpers ----------------------------------------------------------------------------------------------


@triton.jit
def _dot(a, b, DOT_IN_FP32: tl.constexpr, FP32_FMA: tl.constexpr):
    """a @ b accumulated in fp32. fp32 operands use 3xTF32 (fp32-level accuracy on tensor cores), or plain fp32 FMAs
    with FP32_FMA (the 3xTF32 split operands of the wide backward tiles do not fit in registers); DOT_IN_FP32 upcasts
    both operands first (the interpreter multiplies bf16 incorrectly)."""
    if DOT_IN_FP32:
        return tl.dot(a.to(tl.float32), b.to(tl.float32))
    elif a.dtype == tl.float32 and FP32_FMA:
        return tl.dot(a, b, input_precision="ieee")
    elif a.dtype == tl.float32:
        return tl.dot(a, b, input_precision="tf32x3")
    else:
        return tl.dot(a, b)


@triton.jit
def _doc_span(blk, CU, BLK_DOC, BLK_IDX, T, S, varlen, BLOCK: tl.constexpr):
    """First row of block `blk` and its document's query rows [q_lo, q_hi) and keys [k_lo, k_hi).

    Without cu_seqlens (varlen == 0) the document is the whole row: queries [0, T), keys [0, S), block blk starts at
    blk * BLOCK. With it, the launcher's table gives block blk's (document, index within the document); bounds are
    clamped into [0, T] so that malformed cu_seqlens can never address memory outside the tensors.
    """
    on = varlen != 0
    doc = tl.load(BLK_DOC + blk, mask=on, other=0)
    idx = tl.load(BLK_IDX + blk, mask=on, other=blk)
    lo = tl.minimum(tl.maximum(tl.load(CU + doc, mask=on, other=0), 0), T)
    q_hi = tl.minimum(tl.maximum(tl.load(CU + doc + 1, mask=on, other=T), lo), T)
    k_hi = tl.minimum(tl.maximum(tl.load(CU + doc + 1, mask=on, other=S), lo), S)
    return lo + idx * BLOCK, lo, q_hi, lo, k_hi


@triton.jit
def _band(q_start, q_end, shift, k_lo, k_hi, window, sinks, BLOCK_N: tl.constexpr):
    """Key tiles of query rows [q_start, q_end): sink keys [k_lo, sink_end) then the band [band_lo, band_hi).

    Returns (band_lo, band_hi, sink_end, number of sink tiles, total number of tiles); tile i < n_sink starts at
    k_lo + i * BLOCK_N, later tiles at band_lo + (i - n_sink) * BLOCK_N.
    """
    band_lo = tl.maximum(k_lo, q_start + shift - window + 1)
    band_hi = tl.minimum(q_end + shift, k_hi)
    sink_end = tl.minimum(k_lo + sinks, band_lo)
    has_rows = q_end > q_start  # False for the spare programs of a cu_seqlens grid
    n_sink = tl.where(has_rows, tl.cdiv(tl.maximum(sink_end - k_lo, 0), BLOCK_N), 0)
    n_band = tl.where(has_rows, tl.cdiv(tl.maximum(band_hi - band_lo, 0), BLOCK_N), 0)
    return band_lo, band_hi, sink_end, n_sink, n_sink + n_band


@triton.jit
def _scores(
    qk, qrel, krel, ok, dist_min, n_sink, window, qk_scale, slope, REL_H, R, has_alibi,
    HAS_REL: tl.constexpr, N_DIAG: tl.constexpr,
):  # fmt: skip
    """Base-2 scores of a tile, -inf where the key is not visible.

    qk: raw q.k of the tile, either orientation. Positions are relative to the tile's first key: krel is the key's
    offset in the tile, qrel the offset of the key each query sits at (one a row, the other a column, broadcastable
    to the tile), so qrel - krel is the distance, within [dist_min, dist_min + N_DIAG); keys with krel < n_sink are
    sinks. ok: in-range rows and columns. REL_H points at this head's rel_bias row (R entries).
    """
    visible = ok & (krel <= qrel) & ((krel > qrel - window) | (krel < n_sink))
    s = qk * qk_scale
    if has_alibi != 0:  # -slope * (qrel - krel), as two broadcasts rather than a distance tile
        s += (slope * LOG2E) * krel.to(tl.float32) - (slope * LOG2E) * qrel.to(tl.float32)
    if HAS_REL:
        # One load of the N_DIAG clipped bins the tile spans, then a gather from them (per-element pointers into
        # rel_bias would cost two registers per score).
        bins = tl.load(REL_H + tl.minimum(tl.maximum(dist_min + tl.arange(0, N_DIAG), 0), R - 1))
        idx = qrel - krel - dist_min
        flat = tl.reshape(idx, [idx.shape[0] * idx.shape[1]])
        s += LOG2E * tl.reshape(tl.gather(bins, flat, axis=0), [idx.shape[0], idx.shape[1]])
    return tl.where(visible, s, float("-inf"))


@triton.jit
def _diagonal_sums(ds, N_DIAG: tl.constexpr):
    """out[e] = sum of ds[a, b] over a - b == e - (BLOCK_N - 1) for ds (BLOCK_M, BLOCK_N), e in [0, N_DIAG).

    Gathers from the flattened tile, ROWS rows at a time: row a's element on diagonal e is flat[a * BLOCK_N + a +
    BLOCK_N - 1 - e] (a shear). Chunks of rows keep the sheared copy small (ROWS * N_DIAG values).
    """
    BLOCK_M: tl.constexpr = ds.shape[0]
    BLOCK_N: tl.constexpr = ds.shape[1]
    ROWS: tl.constexpr = 16
    flat = tl.reshape(ds, [BLOCK_M * BLOCK_N])
    e = tl.arange(0, N_DIAG)[:, None]
    out = tl.zeros([N_DIAG], tl.float32)
    for c in tl.static_range(BLOCK_M // ROWS):
        a = c * ROWS + tl.arange(0, ROWS)[None, :]  # (1, ROWS)
        b = a + (BLOCK_N - 1) - e  # (N_DIAG, ROWS) column of diagonal e in row a
        idx = tl.reshape(a * BLOCK_N + tl.minimum(tl.maximum(b, 0), BLOCK_N - 1), [N_DIAG * ROWS])
        sheared = tl.reshape(tl.gather(flat, idx, axis=0), [N_DIAG, ROWS])
        out += tl.sum(tl.where((b >= 0) & (b < BLOCK_N), sheared, 0.0), axis=1)
    return out


# ---- kernels -----------------------------------------------------------------------------------------------------


@triton.jit(do_not_specialize=_RUNTIME_INTS)
def _swa_fwd_kernel(
    Q, K, V, Out, LSE, ALIBI, REL, CU, BLK_DOC, BLK_IDX,
    stride_qb, stride_qt, stride_qh,
    stride_kb, stride_ks, stride_kh,
    stride_vb, stride_vs, stride_vh,
    stride_ob, stride_ot, stride_oh,
    T, S, H, G, head_dim, head_dim_v, R, window, sinks, sm_scale, has_alibi, varlen,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
    HAS_REL: tl.constexpr, DOT_IN_FP32: tl.constexpr,
):  # fmt: skip
    FP32_FMA: tl.constexpr = False
    N_DIAG: tl.constexpr = 2 * max(BLOCK_M, BLOCK_N)  # power of two >= the tile's BLOCK_M + BLOCK_N - 1 diagonals
    blk, h, b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    q_start, q_lo, q_hi, k_lo, k_hi = _doc_span(blk, CU, BLK_DOC, BLK_IDX, T, S, varlen, BLOCK_M)
    shift = k_hi - q_hi
    q_end = tl.minimum(q_start + BLOCK_M, q_hi)
    band_lo, band_hi, sink_end, n_sink, n_tiles = _band(q_start, q_end, shift, k_lo, k_hi, window, sinks, BLOCK_N)

    rows = q_start + tl.arange(0, BLOCK_M)
    row_ok = rows < q_end
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    d_ok = offs_d < head_dim
    dv_ok = offs_dv < head_dim_v
    Q += b.to(tl.int64) * stride_qb + h * stride_qh
    K += b.to(tl.int64) * stride_kb + (h // G) * stride_kh
    V += b.to(tl.int64) * stride_vb + (h // G) * stride_vh
    q = tl.load(Q + rows[:, None] * stride_qt + offs_d[None, :], mask=row_ok[:, None] & d_ok[None, :], other=0.0)
    slope = tl.load(ALIBI + h, mask=has_alibi != 0, other=0.0)
    qk_scale = sm_scale * LOG2E

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], tl.float32)
    for i in range(0, n_tiles):
        in_sink = i < n_sink
        k_start = tl.where(in_sink, k_lo + i * BLOCK_N, band_lo + (i - n_sink) * BLOCK_N)
        cols = k_start + tl.arange(0, BLOCK_N)
        col_ok = cols < tl.where(in_sink, sink_end, band_hi)
        kt = tl.load(K + cols[None, :] * stride_ks + offs_d[:, None], mask=col_ok[None, :] & d_ok[:, None], other=0.0)
        v = tl.load(V + cols[:, None] * stride_vs + offs_dv[None, :], mask=col_ok[:, None] & dv_ok[None, :], other=0.0)
        qrel = rows + shift - k_start
        dist_min = q_start + shift - k_start - (BLOCK_N - 1)
        qk = _dot(q, kt, DOT_IN_FP32, FP32_FMA)
        s = _scores(
            qk, qrel[:, None], tl.arange(0, BLOCK_N)[None, :], row_ok[:, None] & col_ok[None, :],
            dist_min, k_lo + sinks - k_start, window, qk_scale, slope, REL + h * R, R, has_alibi, HAS_REL, N_DIAG,
        )  # fmt: skip
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows with nothing visible yet: exp2(-inf - 0) = 0
        p = tl.math.exp2(s - m_use[:, None])
        alpha = tl.math.exp2(m_i - m_use)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None] + _dot(p.to(V.dtype.element_ty), v, DOT_IN_FP32, FP32_FMA)
        m_i = m_new

    seen = l_i > 0.0
    o = acc / tl.where(seen, l_i, 1.0)[:, None]  # a row that sees no key gets o = 0
    Out += b.to(tl.int64) * stride_ob + h * stride_oh
    tl.store(
        Out + rows[:, None] * stride_ot + offs_dv[None, :],
        o.to(Out.dtype.element_ty),
        mask=row_ok[:, None] & dv_ok[None, :],
    )
    lse = tl.where(seen, (m_i + tl.math.log2(tl.where(seen, l_i, 1.0))) * LN2, float("-inf"))
    tl.store(LSE + (b * H + h).to(tl.int64) * T + rows, lse, mask=row_ok)


@triton.jit(do_not_specialize=("T",))
def _swa_bwd_delta_kernel(
    Out, DO, DELTA,
    stride_ob, stride_ot, stride_oh,
    stride_dob, stride_dot, stride_doh,
    T, H, head_dim_v,
    BLOCK_T: tl.constexpr, BLOCK_DV: tl.constexpr,
):  # fmt: skip
    blk, h, b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    rows = blk * BLOCK_T + tl.arange(0, BLOCK_T)
    offs_dv = tl.arange(0, BLOCK_DV)
    mask = (rows[:, None] < T) & (offs_dv[None, :] < head_dim_v)
    o = tl.load(
        Out + b.to(tl.int64) * stride_ob + h * stride_oh + rows[:, None] * stride_ot + offs_dv[None, :], mask=mask
    )
    do = tl.load(
        DO + b.to(tl.int64) * stride_dob + h * stride_doh + rows[:, None] * stride_dot + offs_dv[None, :], mask=mask
    )
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), axis=1)
    tl.store(DELTA + (b * H + h).to(tl.int64) * T + rows, delta, mask=rows < T)


@triton.jit(do_not_specialize=_RUNTIME_INTS)
def _swa_bwd_dkdv_kernel(
    Q, K, V, DO, LSE, DELTA, DK, DV, ALIBI, REL, CU, BLK_DOC, BLK_IDX,
    stride_qb, stride_qt, stride_qh,
    stride_kb, stride_ks, stride_kh,
    stride_vb, stride_vs, stride_vh,
    stride_dob, stride_dot, stride_doh,
    stride_dkb, stride_dks, stride_dkh,
    stride_dvb, stride_dvs, stride_dvh,
    T, S, H, G, head_dim, head_dim_v, R, window, sinks, sm_scale, has_alibi, varlen,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
    HAS_REL: tl.constexpr, DOT_IN_FP32: tl.constexpr,
):  # fmt: skip
    FP32_FMA: tl.constexpr = BLOCK_D >= 128  # see _dot
    N_DIAG: tl.constexpr = 2 * max(BLOCK_M, BLOCK_N)  # power of two >= the tile's BLOCK_M + BLOCK_N - 1 diagonals
    blk, hk, b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    k_start, q_lo, q_hi, k_lo, k_hi = _doc_span(blk, CU, BLK_DOC, BLK_IDX, T, S, varlen, BLOCK_N)
    shift = k_hi - q_hi
    k_end = tl.minimum(k_start + BLOCK_N, k_hi)
    # Queries that see a key of this block: from the first whose position reaches it to the last whose window
    # still covers it; a block holding sink keys is seen by every later query of the document.
    t_lo = tl.maximum(q_lo, k_start - shift)
    t_hi = tl.where(k_start - k_lo < sinks, q_hi, tl.minimum(q_hi, k_end + window - 1 - shift))
    n_q = tl.where(k_end > k_start, tl.cdiv(tl.maximum(t_hi - t_lo, 0), BLOCK_M), 0)  # 0: a spare program

    cols = k_start + tl.arange(0, BLOCK_N)  # key indices: the rows of every tile here
    col_ok = cols < k_end
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    d_ok = offs_d < head_dim
    dv_ok = offs_dv < head_dim_v
    K += b.to(tl.int64) * stride_kb + hk * stride_kh
    V += b.to(tl.int64) * stride_vb + hk * stride_vh
    k = tl.load(K + cols[:, None] * stride_ks + offs_d[None, :], mask=col_ok[:, None] & d_ok[None, :], other=0.0)
    v = tl.load(V + cols[:, None] * stride_vs + offs_dv[None, :], mask=col_ok[:, None] & dv_ok[None, :], other=0.0)
    qk_scale = sm_scale * LOG2E

    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_DV], tl.float32)
    for g in range(0, G):
        h = hk * G + g
        Qh = Q + b.to(tl.int64) * stride_qb + h * stride_qh
        DOh = DO + b.to(tl.int64) * stride_dob + h * stride_doh
        row_stats = (b * H + h).to(tl.int64) * T
        slope = tl.load(ALIBI + h, mask=has_alibi != 0, other=0.0)
        for i in range(0, n_q):
            rows = t_lo + i * BLOCK_M + tl.arange(0, BLOCK_M)
            row_ok = rows < t_hi
            q = tl.load(
                Qh + rows[:, None] * stride_qt + offs_d[None, :], mask=row_ok[:, None] & d_ok[None, :], other=0.0
            )
            do = tl.load(
                DOh + rows[:, None] * stride_dot + offs_dv[None, :], mask=row_ok[:, None] & dv_ok[None, :], other=0.0
            )
            lse = tl.load(LSE + row_stats + rows, mask=row_ok, other=float("inf"))
            lse = tl.where(lse == float("-inf"), float("inf"), lse) * LOG2E  # rows that saw nothing: p = 0
            delta = tl.load(DELTA + row_stats + rows, mask=row_ok, other=0.0)
            qrel = rows + shift - k_start
            dist_min = t_lo + i * BLOCK_M + shift - k_start - (BLOCK_N - 1)
            qkt = _dot(k, tl.trans(q), DOT_IN_FP32, FP32_FMA)  # transposed tile (BLOCK_N keys, BLOCK_M queries)
            st = _scores(
                qkt, qrel[None, :], tl.arange(0, BLOCK_N)[:, None], col_ok[:, None] & row_ok[None, :],
                dist_min, k_lo + sinks - k_start, window, qk_scale, slope, REL + h * R, R, has_alibi, HAS_REL, N_DIAG,
            )  # fmt: skip
            pt = tl.math.exp2(st - lse[None, :])
            dv += _dot(pt.to(DO.dtype.element_ty), do, DOT_IN_FP32, FP32_FMA)
            dst = pt * (_dot(v, tl.trans(do), DOT_IN_FP32, FP32_FMA) - delta[None, :])
            dk += _dot(dst.to(Q.dtype.element_ty), q, DOT_IN_FP32, FP32_FMA)

    DK += b.to(tl.int64) * stride_dkb + hk * stride_dkh
    DV += b.to(tl.int64) * stride_dvb + hk * stride_dvh
    tl.store(
        DK + cols[:, None] * stride_dks + offs_d[None, :],
        (dk * sm_scale).to(DK.dtype.element_ty),
        mask=col_ok[:, None] & d_ok[None, :],
    )
    tl.store(
        DV + cols[:, None] * stride_dvs + offs_dv[None, :],
        dv.to(DV.dtype.element_ty),
        mask=col_ok[:, None] & dv_ok[None, :],
    )


@triton.jit(do_not_specialize=_RUNTIME_INTS + ("B",))
def _swa_bwd_dq_kernel(
    Q, K, V, DO, LSE, DELTA, DQ, DREL, ALIBI, REL, CU, BLK_DOC, BLK_IDX,
    stride_qb, stride_qt, stride_qh,
    stride_kb, stride_ks, stride_kh,
    stride_vb, stride_vs, stride_vh,
    stride_dob, stride_dot, stride_doh,
    stride_dqb, stride_dqt, stride_dqh,
    B, T, S, H, G, head_dim, head_dim_v, R, window, sinks, sm_scale, has_alibi, varlen,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
    HAS_REL: tl.constexpr, DOT_IN_FP32: tl.constexpr,
):  # fmt: skip
    FP32_FMA: tl.constexpr = BLOCK_D >= 128  # see _dot
    N_DIAG: tl.constexpr = 2 * max(BLOCK_M, BLOCK_N)  # power of two >= the tile's BLOCK_M + BLOCK_N - 1 diagonals
    blk, h, b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    q_start, q_lo, q_hi, k_lo, k_hi = _doc_span(blk, CU, BLK_DOC, BLK_IDX, T, S, varlen, BLOCK_M)
    shift = k_hi - q_hi
    q_end = tl.minimum(q_start + BLOCK_M, q_hi)
    band_lo, band_hi, sink_end, n_sink, n_tiles = _band(q_start, q_end, shift, k_lo, k_hi, window, sinks, BLOCK_N)

    rows = q_start + tl.arange(0, BLOCK_M)
    row_ok = rows < q_end
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    d_ok = offs_d < head_dim
    dv_ok = offs_dv < head_dim_v
    Q += b.to(tl.int64) * stride_qb + h * stride_qh
    DO += b.to(tl.int64) * stride_dob + h * stride_doh
    K += b.to(tl.int64) * stride_kb + (h // G) * stride_kh
    V += b.to(tl.int64) * stride_vb + (h // G) * stride_vh
    q = tl.load(Q + rows[:, None] * stride_qt + offs_d[None, :], mask=row_ok[:, None] & d_ok[None, :], other=0.0)
    do = tl.load(DO + rows[:, None] * stride_dot + offs_dv[None, :], mask=row_ok[:, None] & dv_ok[None, :], other=0.0)
    row_stats = (b * H + h).to(tl.int64) * T
    lse = tl.load(LSE + row_stats + rows, mask=row_ok, other=float("inf"))
    lse = tl.where(lse == float("-inf"), float("inf"), lse) * LOG2E  # rows that saw nothing: p = 0
    delta = tl.load(DELTA + row_stats + rows, mask=row_ok, other=0.0)
    slope = tl.load(ALIBI + h, mask=has_alibi != 0, other=0.0)
    qk_scale = sm_scale * LOG2E
    DREL += ((blk.to(tl.int64) * B + b) * H + h) * R  # this program's private row of d rel_bias partial sums
    clipped = tl.full([], 0.0, tl.float32)  # d rel_bias[h, R - 1]: every pair at distance >= R - 1

    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for i in range(0, n_tiles):
        in_sink = i < n_sink
        k_start = tl.where(in_sink, k_lo + i * BLOCK_N, band_lo + (i - n_sink) * BLOCK_N)
        cols = k_start + tl.arange(0, BLOCK_N)
        col_ok = cols < tl.where(in_sink, sink_end, band_hi)
        kt = tl.load(K + cols[None, :] * stride_ks + offs_d[:, None], mask=col_ok[None, :] & d_ok[:, None], other=0.0)
        vt = tl.load(V + cols[None, :] * stride_vs + offs_dv[:, None], mask=col_ok[None, :] & dv_ok[:, None], other=0.0)
        qrel = rows + shift - k_start
        dist_min = q_start + shift - k_start - (BLOCK_N - 1)
        qk = _dot(q, kt, DOT_IN_FP32, FP32_FMA)
        s = _scores(
            qk, qrel[:, None], tl.arange(0, BLOCK_N)[None, :], row_ok[:, None] & col_ok[None, :],
            dist_min, k_lo + sinks - k_start, window, qk_scale, slope, REL + h * R, R, has_alibi, HAS_REL, N_DIAG,
        )  # fmt: skip
        p = tl.math.exp2(s - lse[:, None])
        ds = p * (_dot(do, vt, DOT_IN_FP32, FP32_FMA) - delta[:, None])  # d score, exactly 0 where not visible
        dq += _dot(ds.to(K.dtype.element_ty), tl.trans(kt), DOT_IN_FP32, FP32_FMA)
        if HAS_REL:
            clipped += tl.sum(tl.where(qrel[:, None] - tl.arange(0, BLOCK_N)[None, :] >= R - 1, ds, 0.0))
            if dist_min < R - 1:  # some diagonal of the tile has an exact (unclipped) bin
                bins = dist_min + tl.arange(0, N_DIAG)
                exact = (bins >= 0) & (bins < R - 1)
                partial = tl.load(DREL + bins, mask=exact, other=0.0)
                tl.store(DREL + bins, partial + _diagonal_sums(ds, N_DIAG), mask=exact)
                tl.debug_barrier()  # the next tile reads bins this one wrote, maybe from other threads

    DQ += b.to(tl.int64) * stride_dqb + h * stride_dqh
    tl.store(
        DQ + rows[:, None] * stride_dqt + offs_d[None, :],
        (dq * sm_scale).to(DQ.dtype.element_ty),
        mask=row_ok[:, None] & d_ok[None, :],
    )
    if HAS_REL:
        tl.store(DREL + R - 1, clipped)


# ---- tiles and compiled configurations ---------------------------------------------------------------------------


class Tiles(NamedTuple):
    block_m: int  # query rows per tile
    block_n: int  # keys per tile
    num_warps: int
    num_stages: int


# (kernel, fp32 inputs, BLOCK_D, HAS_REL) -> tiles: for each key, the first of a fixed preference list (big tiles and
# 8 warps first) whose sm_80 and sm_90a builds use no stack (no register spills) and fit in shared memory, compiled
# with the alignment specialisation of common shapes (16-byte aligned pointers, strides and head dims multiple of 16).
# ptxas is far from monotonic here (a smaller tile can spill where a bigger one does not), hence a table rather than
# a formula. fp32 tiles are small: 3xTF32 splits every operand in two (and the backward at BLOCK_D >= 128 falls back
# to FMA dots, see `_dot`). The tests check that `aot_configs()` covers every entry.
_TILES: dict[tuple[str, bool, int, bool], Tiles] = {
    # forward: BLOCK_M queries x BLOCK_N keys
    ("fwd", False, 32, False): Tiles(128, 64, 8, 3),
    ("fwd", False, 32, True): Tiles(128, 64, 8, 3),
    ("fwd", False, 64, False): Tiles(128, 64, 8, 3),
    ("fwd", False, 64, True): Tiles(128, 64, 8, 3),
    ("fwd", False, 128, False): Tiles(128, 32, 8, 3),
    ("fwd", False, 128, True): Tiles(128, 32, 8, 3),
    ("fwd", False, 256, False): Tiles(64, 32, 8, 2),
    ("fwd", False, 256, True): Tiles(64, 32, 8, 2),
    ("fwd", True, 32, False): Tiles(64, 32, 8, 2),
    ("fwd", True, 32, True): Tiles(64, 32, 8, 2),
    ("fwd", True, 64, False): Tiles(32, 64, 8, 2),
    ("fwd", True, 64, True): Tiles(32, 64, 8, 2),
    ("fwd", True, 128, False): Tiles(32, 64, 8, 2),
    ("fwd", True, 128, True): Tiles(32, 64, 8, 2),
    ("fwd", True, 256, False): Tiles(16, 32, 8, 1),
    ("fwd", True, 256, True): Tiles(16, 32, 8, 1),
    # dk, dv: BLOCK_N keys per program, BLOCK_M queries per step
    ("dkdv", False, 32, False): Tiles(32, 128, 8, 2),
    ("dkdv", False, 32, True): Tiles(32, 128, 8, 2),
    ("dkdv", False, 64, False): Tiles(16, 128, 8, 2),
    ("dkdv", False, 64, True): Tiles(32, 64, 4, 2),
    ("dkdv", False, 128, False): Tiles(32, 64, 8, 2),
    ("dkdv", False, 128, True): Tiles(32, 64, 8, 2),
    ("dkdv", False, 256, False): Tiles(32, 32, 8, 2),
    ("dkdv", False, 256, True): Tiles(32, 32, 8, 2),
    ("dkdv", True, 32, False): Tiles(16, 128, 8, 2),
    ("dkdv", True, 32, True): Tiles(16, 128, 8, 2),
    ("dkdv", True, 64, False): Tiles(16, 32, 8, 1),
    ("dkdv", True, 64, True): Tiles(16, 32, 8, 1),
    ("dkdv", True, 128, False): Tiles(16, 64, 8, 1),
    ("dkdv", True, 128, True): Tiles(16, 64, 8, 1),
    ("dkdv", True, 256, False): Tiles(16, 32, 8, 1),
    ("dkdv", True, 256, True): Tiles(16, 32, 8, 1),
    # dq (+ d rel_bias): BLOCK_M queries per program, BLOCK_N keys per step
    ("dq", False, 32, False): Tiles(128, 64, 8, 2),
    ("dq", False, 32, True): Tiles(128, 64, 8, 2),
    ("dq", False, 64, False): Tiles(128, 64, 8, 2),
    ("dq", False, 64, True): Tiles(64, 64, 8, 2),
    ("dq", False, 128, False): Tiles(128, 32, 8, 2),
    ("dq", False, 128, True): Tiles(64, 64, 8, 2),
    ("dq", False, 256, False): Tiles(64, 64, 8, 2),
    ("dq", False, 256, True): Tiles(32, 64, 8, 2),
    ("dq", True, 32, False): Tiles(128, 32, 8, 2),
    ("dq", True, 32, True): Tiles(128, 32, 8, 2),
    ("dq", True, 64, False): Tiles(32, 64, 8, 2),
    ("dq", True, 64, True): Tiles(32, 64, 8, 2),
    ("dq", True, 128, False): Tiles(16, 64, 8, 1),
    ("dq", True, 128, True): Tiles(64, 32, 8, 2),
    ("dq", True, 256, False): Tiles(16, 64, 8, 1),
    ("dq", True, 256, True): Tiles(16, 32, 8, 1),
}
_DELTA_BLOCK_T = 64
_DTYPES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


def head_blocks(D: int, Dv: int, fp32: bool) -> tuple[int, int]:
    """(BLOCK_D, BLOCK_DV): both the next power of two >= max(D, Dv, 32), except BLOCK_DV = 128 when BLOCK_D = 256,
    Dv <= 128 and the inputs are 16-bit (MLA prefill: D = 192, Dv = 128; in fp32 that pair spills on sm_90a)."""
    block_d = max(32, triton.next_power_of_2(max(D, Dv)))
    return block_d, (128 if block_d == 256 and Dv <= 128 and not fp32 else block_d)


def _head_block_pairs(fp32: bool) -> list[tuple[int, int]]:
    return sorted({head_blocks(d, v, fp32) for d in (32, 64, 128, 256) for v in (32, 128, 256) if v <= d})


def _signature(fn, types: dict[str, str], constexprs: dict) -> dict[str, str]:
    """Triton signature of `fn`: constexprs, the given pointer/float types, and i32 for every other argument."""
    params = inspect.signature(getattr(fn, "fn", fn)).parameters
    return {p: "constexpr" if p in constexprs else types.get(p, "i32") for p in params}


def _attention_types(dtype: str) -> dict[str, str]:
    t = {p: f"*{dtype}" for p in ("Q", "K", "V", "Out", "DO", "DQ", "DK", "DV")}
    t.update({p: "*fp32" for p in ("LSE", "DELTA", "DREL", "ALIBI", "REL")})
    t.update({p: "*i32" for p in ("CU", "BLK_DOC", "BLK_IDX")})
    t["sm_scale"] = "fp32"
    return t


def aot_configs() -> list[AOTConfig]:
    """Every (kernel, constexprs, num_warps, num_stages) the launchers below can launch on a GPU."""
    kernels = {"fwd": _swa_fwd_kernel, "dkdv": _swa_bwd_dkdv_kernel, "dq": _swa_bwd_dq_kernel}
    configs = []
    for torch_dtype, dt in _DTYPES.items():
        types = _attention_types(dt)
        for (kind, fp32, bd, rel), t in _TILES.items():
            if fp32 != (torch_dtype == torch.float32):
                continue
            for bdv in (v for d, v in _head_block_pairs(fp32) if d == bd):
                cx = dict(
                    BLOCK_M=t.block_m, BLOCK_N=t.block_n, BLOCK_D=bd, BLOCK_DV=bdv, HAS_REL=rel, DOT_IN_FP32=False
                )
                name = f"swa_{kind}[{dt},D={bd},DV={bdv},rel={int(rel)},BM={t.block_m},BN={t.block_n}]"
                fn = kernels[kind]
                configs.append(AOTConfig(name, fn, _signature(fn, types, cx), cx, t.num_warps, t.num_stages))
        for bdv in sorted({v for _, v in _head_block_pairs(torch_dtype == torch.float32)}):
            cx = dict(BLOCK_T=_DELTA_BLOCK_T, BLOCK_DV=bdv)
            sig = _signature(_swa_bwd_delta_kernel, types, cx)
            configs.append(AOTConfig(f"swa_bwd_delta[{dt},DV={bdv}]", _swa_bwd_delta_kernel, sig, cx, 4, 1))
    return configs


# ---- launchers ---------------------------------------------------------------------------------------------------


class _Problem(NamedTuple):
    """Validated arguments in kernel form."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    window: int  # clamped to [1, S]: S means unlimited
    sinks: int
    scale: float
    alibi: torch.Tensor | None  # (H,) fp32
    rel: torch.Tensor | None  # (H, R) fp32
    R: int  # 1 without rel_bias
    cu: torch.Tensor | None  # (N + 1,) int32
    block_d: int
    block_dv: int
    dot_in_fp32: bool


def _require(cond: bool, msg: str) -> None:
    if not cond:
        raise ValueError(msg)


def _row_extent_fits_int32(x: torch.Tensor) -> bool:
    # Offsets inside one batch row are int32 in the kernels; the batch offset is int64.
    return sum((n - 1) * abs(st) for n, st in zip(x.shape[1:], x.stride()[1:])) < _INT32_MAX


def _problem(name, q, k, v, window, softmax_scale, alibi_slopes, rel_bias, sink_tokens, cu_seqlens) -> _Problem:
    _require(
        q.dim() == 4 and k.dim() == 4 and v.dim() == 4,
        f"{name}: q, k, v must be 4-D (B, T, H, D), got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}",
    )
    _require(
        q.dtype in _DTYPES and q.dtype == k.dtype == v.dtype,
        f"{name}: q, k, v must share one dtype out of fp32, fp16, bf16, got {q.dtype}, {k.dtype}, {v.dtype}",
    )
    dev = q.device
    _require(k.device == dev and v.device == dev, f"{name}: q, k, v must be on one device")
    _require(
        dev.type == "cuda" or (dev.type == "cpu" and interpret_mode()),
        f"{name}: the Triton kernel needs CUDA tensors (or CPU tensors with TRITON_INTERPRET=1), got {dev}",
    )
    B, T, H, D = q.shape
    S, Hkv, Dv = k.shape[1], k.shape[2], v.shape[3]
    _require(
        k.shape == (B, S, Hkv, D) and v.shape[:3] == (B, S, Hkv),
        f"{name}: k {tuple(k.shape)} and v {tuple(v.shape)} do not match q {tuple(q.shape)} as (B, S, Hkv, D|Dv)",
    )
    _require(Hkv >= 1 and H % Hkv == 0, f"{name}: H={H} query heads is not a multiple of Hkv={Hkv} kv heads")
    _require(T <= S, f"{name}: T={T} queries exceed S={S} keys (queries are bottom-right aligned)")
    _require(
        1 <= D <= _MAX_HEAD_DIM and 1 <= Dv <= _MAX_HEAD_DIM,
        f"{name}: head dims must be in [1, {_MAX_HEAD_DIM}], got D={D}, Dv={Dv}",
    )
    _require(H <= 65535 and B <= 65535, f"{name}: B={B} and H={H} must each be <= 65535 (grid limits)")
    _require(
        window is None or (isinstance(window, int) and not isinstance(window, bool) and window >= 1),
        f"{name}: window must be None or an int >= 1, got {window!r}",
    )
    _require(
        isinstance(sink_tokens, int) and not isinstance(sink_tokens, bool) and sink_tokens >= 0,
        f"{name}: sink_tokens must be an int >= 0, got {sink_tokens!r}",
    )
    q, k, v = _last_dim_contiguous(q), _last_dim_contiguous(k), _last_dim_contiguous(v)
    _require(
        all(_row_extent_fits_int32(x) for x in (q, k, v)),
        f"{name}: one batch row of q, k or v spans 2**31 or more elements; split the batch",
    )
    alibi, rel, R = None, None, 1
    if alibi_slopes is not None:
        _require(
            alibi_slopes.shape == (H,) and alibi_slopes.is_floating_point() and alibi_slopes.device == dev,
            f"{name}: alibi_slopes must be a float ({H},) tensor on {dev}, got {tuple(alibi_slopes.shape)} "
            f"{alibi_slopes.dtype} on {alibi_slopes.device}",
        )
        alibi = alibi_slopes.detach().to(torch.float32).contiguous()
    if rel_bias is not None:
        _require(
            rel_bias.dim() == 2 and rel_bias.shape[0] == H and rel_bias.shape[1] >= 1,
            f"{name}: rel_bias must be (H={H}, R>=1), got {tuple(rel_bias.shape)}",
        )
        _require(
            rel_bias.is_floating_point() and rel_bias.device == dev,
            f"{name}: rel_bias must be a float tensor on {dev}, got {rel_bias.dtype} on {rel_bias.device}",
        )
        rel, R = rel_bias.detach().to(torch.float32).contiguous(), rel_bias.shape[1]
        _require(rel.numel() < _INT32_MAX, f"{name}: rel_bias has 2**31 or more entries")
    cu = None
    if cu_seqlens is not None:
        _require(B == 1 and T == S, f"{name}: cu_seqlens needs B == 1 and T == S, got B={B}, T={T}, S={S}")
        _require(
            cu_seqlens.dim() == 1
            and cu_seqlens.numel() >= 2
            and cu_seqlens.dtype in (torch.int32, torch.int64)
            and cu_seqlens.device == dev,
            f"{name}: cu_seqlens must be a 1-D int32 (N+1,) tensor on {dev}, N >= 1, got {tuple(cu_seqlens.shape)} "
            f"{cu_seqlens.dtype} on {cu_seqlens.device}",
        )
        if cu_seqlens.device.type == "cpu":  # free to check here; on a GPU it would cost a sync per call
            b = cu_seqlens.tolist()
            _require(
                b[0] == 0 and b[-1] == T and all(x <= y for x, y in zip(b, b[1:])),
                f"{name}: cu_seqlens must be non-decreasing from 0 to T={T}, got {b}",
            )
        cu = cu_seqlens.to(torch.int32).contiguous()
    scale = 1.0 / math.sqrt(D) if softmax_scale is None else float(softmax_scale)
    block_d, block_dv = head_blocks(D, Dv, q.dtype == torch.float32)
    return _Problem(
        q,
        k,
        v,
        max(1, S if window is None else min(window, S)),
        min(sink_tokens, S),
        scale,
        alibi,
        rel,
        R,
        cu,
        block_d,
        block_dv,
        interpret_mode(),
    )


def _block_table(pb: _Problem, n: int, block: int) -> tuple[int, torch.Tensor, torch.Tensor]:
    """(number of programs, document of each, index of its block inside the document) for blocks of `block` rows.

    Without cu_seqlens it is cdiv(n, block) programs and the kernels ignore the (dummy) tables. With it there are
    cdiv(T, block) + N programs, an upper bound on the sum over documents of cdiv(length, block); programs past the
    real blocks get an index beyond their document and do nothing. Built with torch ops on the device: no sync.
    """
    n_blocks = triton.cdiv(n, block)
    if pb.cu is None:
        dummy = torch.zeros(1, dtype=torch.int32, device=pb.q.device)
        return n_blocks, dummy, dummy
    N = pb.cu.numel() - 1
    per_doc = (pb.cu[1:] - pb.cu[:-1]).clamp(min=0).add(block - 1).div(block, rounding_mode="floor")  # (N,)
    ends = torch.cumsum(per_doc, 0)  # (N,)
    pid = torch.arange(n_blocks + N, device=pb.cu.device)  # (P,)
    doc = torch.searchsorted(ends, pid, right=True).clamp(max=N - 1)  # (P,)
    idx = pid - (ends - per_doc)[doc]  # (P,)
    return n_blocks + N, doc.to(torch.int32), idx.to(torch.int32)


def _tiles(kind: str, pb: _Problem) -> Tiles:
    return _TILES[kind, pb.q.dtype == torch.float32, pb.block_d, pb.rel is not None]


def _bias_tensors(pb: _Problem) -> tuple[torch.Tensor, torch.Tensor]:
    """(ALIBI, REL) kernel arguments: the fp32 tables, or a never-read fp32 placeholder for an absent one."""
    placeholder = torch.empty(1, dtype=torch.float32, device=pb.q.device)
    return (placeholder if pb.alibi is None else pb.alibi), (placeholder if pb.rel is None else pb.rel)


def _runtime_args(pb: _Problem) -> tuple:
    """T, S, H, G, head_dim, head_dim_v, R, window, sinks, sm_scale, has_alibi, varlen."""
    B, T, H, D = pb.q.shape
    S, Hkv, Dv = pb.k.shape[1], pb.k.shape[2], pb.v.shape[3]
    flags = (int(pb.alibi is not None), int(pb.cu is not None))
    return (T, S, H, H // Hkv, D, Dv, pb.R, pb.window, pb.sinks, pb.scale, *flags)


def _strides(x: torch.Tensor) -> tuple[int, int, int]:
    return x.stride(0), x.stride(1), x.stride(2)


def _forward(pb: _Problem) -> tuple[torch.Tensor, torch.Tensor]:
    B, T, H, _ = pb.q.shape
    o = pb.q.new_empty(B, T, H, pb.v.shape[3])
    lse = torch.full((B, H, T), float("-inf"), dtype=torch.float32, device=pb.q.device)
    if o.numel() == 0:
        return o, lse
    tiles = _tiles("fwd", pb)
    n_prog, blk_doc, blk_idx = _block_table(pb, T, tiles.block_m)
    cu = blk_doc if pb.cu is None else pb.cu
    _swa_fwd_kernel[(n_prog, H, B)](
        pb.q, pb.k, pb.v, o, lse, *_bias_tensors(pb), cu, blk_doc, blk_idx,
        *_strides(pb.q), *_strides(pb.k), *_strides(pb.v), *_strides(o),
        *_runtime_args(pb),
        BLOCK_M=tiles.block_m, BLOCK_N=tiles.block_n, BLOCK_D=pb.block_d, BLOCK_DV=pb.block_dv,
        HAS_REL=pb.rel is not None, DOT_IN_FP32=pb.dot_in_fp32, num_warps=tiles.num_warps, num_stages=tiles.num_stages,
    )  # fmt: skip
    return o, lse


@register_triton("sliding_window_attention")
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
    return_lse=True,
):
    """Triton forward of `fastllm.kernels.sliding_window_attention` (same arguments as the reference).

    Args:
        q: (B, T, H, D); k: (B, S, Hkv, D); v: (B, S, Hkv, Dv); one dtype out of fp32, fp16, bf16, on CUDA (or the
            CPU under TRITON_INTERPRET=1). Any strides; a non-unit last stride is made contiguous. D, Dv <= 256.
        window, softmax_scale, alibi_slopes (H,), rel_bias (H, R), sink_tokens, cu_seqlens (N + 1,) int32:
            as in the public function. cu_seqlens values are checked when the tensor is on the CPU; on a GPU they
            are trusted (checking would sync), and clamped so that nothing is read out of bounds.
        return_lse: also return lse.

    Returns o (B, T, H, Dv) in q's dtype and, with return_lse, lse (B, H, T) fp32, the natural-log softmax
    normaliser (-inf where a row sees no key; such rows get o = 0).
    """
    pb = _problem(
        "sliding_window_attention", q, k, v, window, softmax_scale, alibi_slopes, rel_bias, sink_tokens, cu_seqlens
    )
    o, lse = _forward(pb)
    return (o, lse) if return_lse else o


@register_triton("sliding_window_attention_backward")
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
):
    """Triton backward of `sliding_window_attention`: (dq, dk, dv, d rel_bias or None) in the input dtypes.

    Args:
        do: (B, T, H, Dv), the gradient of o, same dtype as q. o, lse: the forward outputs (recomputed when None).
        The rest as in the forward. ALiBi slopes get no gradient.

    d rel_bias is deterministic (per-program partial rows summed afterwards; see the module docstring).
    """
    name = "sliding_window_attention_backward"
    pb = _problem(name, q, k, v, window, softmax_scale, alibi_slopes, rel_bias, sink_tokens, cu_seqlens)
    B, T, H, D = pb.q.shape
    S, Hkv, Dv = pb.k.shape[1], pb.k.shape[2], pb.v.shape[3]
    _require(
        do.shape == (B, T, H, Dv) and do.dtype == q.dtype and do.device == q.device,
        f"{name}: do must be {(B, T, H, Dv)} {q.dtype} on {q.device}, got {tuple(do.shape)} {do.dtype}",
    )
    if o is None or lse is None:
        o, lse = _forward(pb)
    _require(
        o.shape == (B, T, H, Dv) and o.dtype == q.dtype and o.device == q.device,
        f"{name}: o must be {(B, T, H, Dv)} {q.dtype} on {q.device}, got {tuple(o.shape)} {o.dtype}",
    )
    _require(
        lse.shape == (B, H, T) and lse.dtype == torch.float32 and lse.device == q.device,
        f"{name}: lse must be ({B}, {H}, {T}) float32 on {q.device}, got {tuple(lse.shape)} {lse.dtype}",
    )
    do, o, lse = _last_dim_contiguous(do), _last_dim_contiguous(o), lse.contiguous()
    _require(
        _row_extent_fits_int32(do) and _row_extent_fits_int32(o),
        f"{name}: one batch row of do or o spans 2**31 or more elements; split the batch",
    )
    dq, dk, dv = torch.empty_like(pb.q), torch.empty_like(pb.k), torch.empty_like(pb.v)
    drel = None if rel_bias is None else torch.zeros_like(rel_bias)
    if T == 0 or B * H == 0:
        return dq, dk.zero_(), dv.zero_(), drel

    delta = torch.empty(B, H, T, dtype=torch.float32, device=q.device)
    _swa_bwd_delta_kernel[(triton.cdiv(T, _DELTA_BLOCK_T), H, B)](
        o, do, delta, *_strides(o), *_strides(do), T, H, Dv,
        BLOCK_T=_DELTA_BLOCK_T, BLOCK_DV=pb.block_dv, num_warps=4, num_stages=1,
    )  # fmt: skip

    args = _runtime_args(pb)
    tiles = _tiles("dkdv", pb)
    n_prog, blk_doc, blk_idx = _block_table(pb, S, tiles.block_n)
    cu = blk_doc if pb.cu is None else pb.cu
    _swa_bwd_dkdv_kernel[(n_prog, Hkv, B)](
        pb.q, pb.k, pb.v, do, lse, delta, dk, dv, *_bias_tensors(pb), cu, blk_doc, blk_idx,
        *_strides(pb.q), *_strides(pb.k), *_strides(pb.v), *_strides(do), *_strides(dk), *_strides(dv),
        *args,
        BLOCK_M=tiles.block_m, BLOCK_N=tiles.block_n, BLOCK_D=pb.block_d, BLOCK_DV=pb.block_dv,
        HAS_REL=pb.rel is not None, DOT_IN_FP32=pb.dot_in_fp32, num_warps=tiles.num_warps, num_stages=tiles.num_stages,
    )  # fmt: skip

    tiles = _tiles("dq", pb)
    n_prog, blk_doc, blk_idx = _block_table(pb, T, tiles.block_m)
    cu = blk_doc if pb.cu is None else pb.cu
    # d rel_bias partial sums: one private row per (program, batch row, head), summed below in a fixed order (without
    # rel_bias, HAS_REL=False compiles every access out and any fp32 tensor stands in).
    drel_rows = torch.zeros(n_prog, B, H, pb.R, dtype=torch.float32, device=q.device) if pb.rel is not None else delta
    _swa_bwd_dq_kernel[(n_prog, H, B)](
        pb.q, pb.k, pb.v, do, lse, delta, dq, drel_rows, *_bias_tensors(pb), cu, blk_doc, blk_idx,
        *_strides(pb.q), *_strides(pb.k), *_strides(pb.v), *_strides(do), *_strides(dq),
        B, *args,
        BLOCK_M=tiles.block_m, BLOCK_N=tiles.block_n, BLOCK_D=pb.block_d, BLOCK_DV=pb.block_dv,
        HAS_REL=pb.rel is not None, DOT_IN_FP32=pb.dot_in_fp32, num_warps=tiles.num_warps, num_stages=tiles.num_stages,
    )  # fmt: skip
    if rel_bias is not None:
        drel = drel_rows.sum(dim=(0, 1)).to(rel_bias.dtype)  # (H, R)
    return dq, dk, dv, drel
