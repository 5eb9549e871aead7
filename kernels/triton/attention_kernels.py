"""Device code of the Triton sliding-window attention (`attention.py` holds the tiles, the compiled configurations
and the launchers): FlashAttention-2 forward and backward, semantics as in `attention.py`.

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
"""

import triton
import triton.language as tl

LOG2E: tl.constexpr = tl.constexpr(1.4426950408889634)
LN2: tl.constexpr = tl.constexpr(0.6931471805599453)

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
