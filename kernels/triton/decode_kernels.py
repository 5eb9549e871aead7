"""Device code of the Triton ring-buffer decode attention (`decode.py` holds the design notes, the compiled
configurations, the checks and the launcher): stage 1 (`_swa_decode_kernel`, one kv head's query rows against one
split of a row's key positions, online softmax in the exp2 domain) and stage 2 (`_swa_decode_combine_kernel`, the
weighted sum of the splits' partial outputs)."""

import triton
import triton.language as tl

_QK_CHUNK = tl.constexpr(64)  # head-dim columns per q . k partial product (the smallest BLOCK_D)


@triton.jit
def _dot(a, b, acc, UPCAST: tl.constexpr):
    """acc + a @ b with fp32 accumulation.

    fp32 operands use "tf32x3" (three TF32 tensor-core products, about fp32 accuracy): plain TF32 would round the
    inputs to 10 mantissa bits, and "ieee" lowers to FMA loops that spill registers at these tile sizes.
    """
    if UPCAST:  # bf16 under the interpreter, whose tl.dot on bf16 operands is wrong (it computes fp32 exactly)
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    if a.dtype == tl.float32:
        return tl.dot(a, b, acc, input_precision="tf32x3")
    else:
        return tl.dot(a, b, acc)


@triton.jit(
    do_not_specialize=[
        "Tq", "H", "Hkv", "G", "C", "window", "sink_tokens", "R", "has_alibi", "num_splits",
    ]
)  # fmt: skip
def _swa_decode_kernel(
    q_ptr,  # (B, Tq, H, D), last dim contiguous
    k_ptr,  # (B, C, Hkv, D), last dim contiguous
    v_ptr,  # (B, C, Hkv, Dv), last dim contiguous
    seqlens_ptr,  # (B,) int32
    alibi_ptr,  # (H,) fp32, read only if has_alibi
    rel_ptr,  # (H, R) fp32 contiguous, read only if HAS_REL_BIAS
    o_ptr,  # (B, Tq, H, Dv) contiguous, written when num_splits == 1
    o_part_ptr,  # (B, Tq, H, num_splits, Dv) fp32, written when num_splits > 1
    lse_part_ptr,  # (B, Tq, H, num_splits) fp32 log2-sum-exp of each split's scores, -inf when it saw no key
    stride_qb,
    stride_qt,
    stride_qh,
    stride_kb,
    stride_kc,
    stride_kh,
    stride_vb,
    stride_vc,
    stride_vh,
    Tq,
    H,
    Hkv,
    G,
    C,
    D,
    Dv,
    window,  # min(window, C); C for window=None
    sink_tokens,
    R,
    has_alibi,
    num_splits,
    qk_scale,  # softmax_scale * log2(e): scores live in the exp2 domain
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    HAS_REL_BIAS: tl.constexpr,  # a constant, not a runtime flag: its gather would hold registers even when off
    UPCAST: tl.constexpr,
):
    pid_bh = tl.program_id(0)
    b = pid_bh // Hkv
    hkv = pid_bh % Hkv
    split = tl.program_id(2)

    # The keys any of this row's queries may see: the band [lo, L) and the n_sink sinks below it.
    L = tl.load(seqlens_ptr + b)
    lo = tl.maximum(L - Tq + 1 - window, 0)
    n_sink = tl.minimum(sink_tokens, lo)
    n_keys = tl.maximum(L - lo, 0) + n_sink
    # This split's share of the key indices, whole tiles of BLOCK_N.
    chunk = tl.cdiv(tl.cdiv(n_keys, num_splits), BLOCK_N) * BLOCK_N
    k_begin = split * chunk
    k_end = tl.minimum(k_begin + chunk, n_keys)

    rows = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)  # (BLOCK_M,) row = t * G + g
    row_ok = rows < Tq * G
    t = rows // G
    h = hkv * G + rows % G  # (BLOCK_M,) query head
    q_pos = L - Tq + t  # (BLOCK_M,) absolute position of each query
    q_lo = q_pos - window  # (BLOCK_M,) the last position before each query's window
    d = tl.arange(0, BLOCK_D)
    q_rows = q_ptr + b.to(tl.int64) * stride_qb + t[:, None] * stride_qt + h[:, None] * stride_qh  # (BLOCK_M, 1)
    slope = tl.zeros([BLOCK_M], tl.float32)  # (BLOCK_M,) ALiBi slope in log2 units, 0 without ALiBi
    if has_alibi != 0:
        slope = tl.load(alibi_ptr + h, mask=row_ok, other=0.0) * 1.4426950408889634

    k_base = k_ptr + b.to(tl.int64) * stride_kb + hkv * stride_kh
    v_base = v_ptr + b.to(tl.int64) * stride_vb + hkv * stride_vh
    ring = C - sink_tokens
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)  # running max (log2 units)
    l_i = tl.zeros([BLOCK_M], tl.float32)  # running sum of exp2(s - m_i)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)  # running sum of exp2(s - m_i) * v
    for start in range(k_begin, k_end, BLOCK_N):
        kk = start + tl.arange(0, BLOCK_N)  # (BLOCK_N,) key index
        key_ok = kk < k_end
        pos = tl.where(kk < n_sink, kk, lo + kk - n_sink)  # (BLOCK_N,) absolute key position
        slot = tl.where(pos < sink_tokens, pos, sink_tokens + (pos - sink_tokens) % ring)  # (BLOCK_N,) in [0, C)
        # q . k over chunks of the head dim, q re-read from L1 each time: a q tile held across the loop would be
        # replicated in every warp's registers as the dot's A operand (spills at BLOCK_D=256 in fp32)
        s = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
        for c in tl.static_range(0, BLOCK_D, _QK_CHUNK):
            dc = c + tl.arange(0, _QK_CHUNK)
            qc = tl.load(q_rows + dc[None, :], mask=row_ok[:, None] & (dc < D)[None, :], other=0.0)
            kc = tl.load(
                k_base + slot[None, :] * stride_kc + dc[:, None], mask=key_ok[None, :] & (dc < D)[:, None], other=0.0
            )  # (_QK_CHUNK, BLOCK_N)
            s = _dot(qc, kc, s, UPCAST)
        s *= qk_scale  # (BLOCK_M, BLOCK_N)
        # ALiBi's -slope * (p - j) less the row constant -slope * (p - L + 1), which softmax ignores: one FMA per
        # score and no (BLOCK_M, BLOCK_N) distance tensor (slope is 0 without ALiBi; cheaper than a branch)
        s += slope[:, None] * (pos - L + 1).to(tl.float32)[None, :]
        # causal and inside the window, or a sink; padding rows need no mask (h stays a valid head, their output
        # is dropped)
        visible = (
            key_ok[None, :]
            & (pos[None, :] <= q_pos[:, None])
            & ((pos[None, :] > q_lo[:, None]) | (pos < sink_tokens)[None, :])
        )
        if HAS_REL_BIAS:
            r = tl.minimum(q_pos[:, None] - pos[None, :], R - 1)  # clipped distance, >= 0 where visible
            s += tl.load(rel_ptr + h[:, None] * R + r, mask=visible, other=0.0) * 1.4426950408889634
        s = tl.where(visible, s, float("-inf"))

        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # a row with no visible key yet: exp2(-inf) = 0
        p = tl.exp2(s - m_safe[:, None])  # (BLOCK_M, BLOCK_N)
        alpha = tl.exp2(m_i - m_safe)  # (BLOCK_M,) rescales what was accumulated under the old max
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(
            v_base + slot[:, None] * stride_vc + d[None, :], mask=key_ok[:, None] & (d < Dv)[None, :], other=0.0
        )  # (BLOCK_N, BLOCK_D)
        acc = _dot(p.to(v.dtype), v, acc * alpha[:, None], UPCAST)
        m_i = m_new

    l_safe = tl.where(l_i == 0.0, 1.0, l_i)  # a query that saw no key outputs 0
    o = acc / l_safe[:, None]  # (BLOCK_M, BLOCK_D)
    out_row = (b * Tq + t) * H + h  # (BLOCK_M,) row of (b, t, h) in (B, Tq, H)
    o_mask = row_ok[:, None] & (d < Dv)[None, :]
    if num_splits == 1:
        tl.store(o_ptr + out_row[:, None] * Dv + d[None, :], o.to(o_ptr.dtype.element_ty), mask=o_mask)
    else:
        part_row = out_row * num_splits + split
        tl.store(o_part_ptr + part_row[:, None] * Dv + d[None, :], o, mask=o_mask)
        lse = tl.where(l_i == 0.0, float("-inf"), m_i + tl.log2(l_safe))
        tl.store(lse_part_ptr + part_row, lse, mask=row_ok)


@triton.jit(do_not_specialize=["num_splits"])
def _swa_decode_combine_kernel(
    o_part_ptr,  # (B * Tq * H, num_splits, Dv) fp32
    lse_part_ptr,  # (B * Tq * H, num_splits) fp32, log2 units
    o_ptr,  # (B * Tq * H, Dv)
    num_splits,
    Dv,
    BLOCK_S: tl.constexpr,  # >= num_splits
    BLOCK_DV: tl.constexpr,
):
    row = tl.program_id(0)
    d = tl.program_id(1) * BLOCK_DV + tl.arange(0, BLOCK_DV)
    s = tl.arange(0, BLOCK_S)
    lse = tl.load(lse_part_ptr + row * num_splits + s, mask=s < num_splits, other=float("-inf"))  # (BLOCK_S,)
    m = tl.max(lse, 0)
    m = tl.where(m == float("-inf"), 0.0, m)  # every split empty: all weights 0, output 0
    total = tl.sum(tl.exp2(lse - m), 0)
    acc = tl.zeros([BLOCK_DV], tl.float32)
    for i in range(num_splits):
        w = tl.exp2(tl.load(lse_part_ptr + row * num_splits + i) - m)
        acc += w * tl.load(o_part_ptr + (row * num_splits + i) * Dv + d, mask=d < Dv, other=0.0)
    o = acc / tl.where(total == 0.0, 1.0, total)
    tl.store(o_ptr + row * Dv + d, o.to(o_ptr.dtype.element_ty), mask=d < Dv)
