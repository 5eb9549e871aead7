"""Ring-buffer decode attention (`swa_decode`) in Triton: flash-decoding over a sliding-window KV cache.

Semantics are those of `fastllm.kernels.reference.attention.swa_decode` (the oracle): Tq new queries per row, the
last Tq of the `cache_seqlens[b]` tokens seen, against a cache of C slots where position s < sink_tokens lives in
slot s and any later s in slot `sink + (s - sink) % (C - sink)`.

Design (decode is memory bound: every cached K/V byte is read once per kv head and reused by all its queries):

- Work is enumerated by *position*, not by slot. The Tq queries of a row see the band of positions
  [lo, L) with lo = max(0, L - Tq + 1 - window), plus the sinks [0, min(sink, lo)) below it; key index k of a row is
  position k (k < n_sink) or lo + k - n_sink, and its slot follows from the ring layout, computed in-kernel from
  cache_seqlens. So only written slots are ever read (never-written ones may hold NaN), a full cache (window=None)
  costs O(L) not O(C), and no position tensor comes from the host.
- Stage 1, grid (B * Hkv, m_blocks, num_splits): one program takes all Tq * G query rows of one kv head (G = H / Hkv,
  row r is query t = r // G of head hkv * G + r % G; GQA sharing, one load of each K/V tile per kv head), up to
  BLOCK_M rows (more rows, e.g. MQA with many heads, spread over m_blocks), and one contiguous share of the row's
  key indices, in tiles of BLOCK_N keys with an online softmax in fp32 (exp2 domain). With one split it writes the
  normalised output directly; with several it writes fp32 partial outputs and their log2-sum-exp.
- Stage 2 (only with several splits), grid (B * Tq * H, cdiv(Dv, 64)): weighs the partial outputs of each row by
  exp2(lse_split - max lse) and normalises.
- Split heuristic (`_num_splits`): splitting pays only while B * Hkv * m_blocks programs leave SMs idle; it then
  aims at two programs per SM, keeps at least `_MIN_TILES_PER_SPLIT` key tiles per split of the longest possible
  row (C, or window + Tq - 1 + sink), and stays at most `MAX_SPLITS`. The SM count is the device's, or 132 (an H100)
  when there is no CUDA device (the CPU interpreter).

Configuration space (`aot_configs`, 27 kernels): stage 1 specialises on the cache dtype, BLOCK_D (64, 128 or 256,
one padded width for both D and Dv, masked), BLOCK_M (16 query rows, or 32 for more rows in fp16/bf16) and whether
there is a rel_bias table (a constant: its in-loop gather holds registers even when skipped at run time); BLOCK_N,
num_warps and num_stages follow from those (`_config`). Window, sinks, ALiBi and the split count are runtime
arguments. Stage 2 specialises on the output dtype only. Integers that describe the problem are exempt from the
JIT's value specialisation (`do_not_specialize`), so a new Tq, window or batch size never recompiles; strides,
head dims and pointers keep it (aligned, vectorised loads).

Limits: head dims up to 256; a single batch row of a cache must hold fewer than 2**31 elements (the batch offset is
64-bit, offsets inside a row are 32-bit).
"""

import functools
import math
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from fastllm.kernels._dispatch import interpret_mode, register_triton
from fastllm.kernels.triton._aot import AOTConfig

MAX_SPLITS = 128  # most splits of one row's keys: bounds the partial buffers and the combine's lse vector
_MIN_TILES_PER_SPLIT = 4  # a split below this many key tiles spends more on its setup and combine than it saves
_SM_COUNT_WITHOUT_GPU = 132  # an H100 SXM: what the split heuristic assumes when there is no CUDA device
_COMBINE_BLOCK_DV = 64  # output columns per combine program
_MAX_HEAD_DIM = 256
_DTYPES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
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


@dataclass(frozen=True)
class _Config:
    """One stage-1 specialisation: what `aot_configs` lists and `_config` picks."""

    dtype: torch.dtype
    block_m: int
    block_n: int
    block_d: int
    has_rel_bias: bool
    num_warps: int
    num_stages: int


# (bytes per element, BLOCK_M, BLOCK_D, has_rel_bias) -> (BLOCK_N, num_warps, num_stages), chosen by compiling
# candidates with `_aot`: no spills on sm_80 nor sm_90a and at least 8 resident warps per SM, then a trade between
# resident warps and bytes per K/V tile (a memory-bound loop wants both). fp32's tf32x3 dots triple the operand
# registers, hence its narrower tiles.
_TILES = {
    (2, 16, 64, False): (64, 4, 2),
    (2, 16, 128, False): (64, 4, 2),
    (2, 16, 256, False): (32, 4, 2),
    (2, 32, 64, False): (64, 4, 2),
    (2, 32, 128, False): (32, 4, 2),
    (2, 32, 256, False): (32, 4, 2),
    (2, 16, 64, True): (64, 4, 2),
    (2, 16, 128, True): (64, 4, 2),
    (2, 16, 256, True): (32, 4, 2),
    (4, 16, 64, False): (32, 4, 2),
    (4, 16, 128, False): (32, 4, 2),
    (4, 16, 256, False): (16, 8, 2),
    (4, 16, 64, True): (32, 4, 2),
    (4, 16, 128, True): (16, 4, 2),
    (4, 16, 256, True): (16, 8, 2),
}


def _config(dtype: torch.dtype, D: int, Dv: int, rows: int, has_rel_bias: bool) -> _Config:
    """The stage-1 configuration for `rows` = Tq * G query rows per kv head."""
    block_d = max(64, triton.next_power_of_2(max(D, Dv)))  # one padded width for D and Dv keeps the space small
    # 16 is tl.dot's smallest M. More rows (speculative decoding, MQA) go 32 at a time, fewer re-reads of K/V than
    # 16-row blocks; 64 would need ~175 registers (1 block per SM). fp32 (tf32x3 dots) and the rel_bias gather
    # need too many registers for 32 rows, and take 16-row blocks.
    wide = rows > 16 and dtype != torch.float32 and not has_rel_bias
    block_m = 32 if wide else 16
    block_n, num_warps, num_stages = _TILES[(dtype.itemsize, block_m, block_d, has_rel_bias)]
    return _Config(dtype, block_m, block_n, block_d, has_rel_bias, num_warps, num_stages)


def _num_splits(programs: int, max_keys: int, block_n: int, sm_count: int) -> int:
    """How many ways to split each row's keys (see the module docstring)."""
    if programs >= sm_count:
        return 1
    by_gpu = triton.cdiv(2 * sm_count, programs)
    by_keys = max(1, max_keys // (_MIN_TILES_PER_SPLIT * block_n))
    return min(by_gpu, by_keys, MAX_SPLITS)


@functools.lru_cache(maxsize=None)
def _sm_count(device: torch.device) -> int:
    if device.type != "cuda":
        return _SM_COUNT_WITHOUT_GPU
    return torch.cuda.get_device_properties(device).multi_processor_count


def _require(cond: bool, msg: str) -> None:
    if not cond:
        raise ValueError(f"swa_decode: {msg}")


def _check_inputs(q, k_cache, v_cache, cache_seqlens, window, sink_tokens, alibi_slopes, rel_bias):
    _require(
        q.dim() == 4 and k_cache.dim() == 4 and v_cache.dim() == 4,
        f"expected q (B, Tq, H, D), k_cache (B, C, Hkv, D), v_cache (B, C, Hkv, Dv); got {tuple(q.shape)}, "
        f"{tuple(k_cache.shape)}, {tuple(v_cache.shape)}",
    )
    _require(
        q.dtype in _DTYPES and q.dtype == k_cache.dtype == v_cache.dtype,
        f"expected q, k_cache, v_cache of one dtype among fp32, fp16, bf16; got {q.dtype}, {k_cache.dtype}, "
        f"{v_cache.dtype}",
    )
    _require(
        q.device == k_cache.device == v_cache.device == cache_seqlens.device,
        f"expected q, k_cache, v_cache, cache_seqlens on one device; got {q.device}, {k_cache.device}, "
        f"{v_cache.device}, {cache_seqlens.device}",
    )
    B, Tq, H, D = q.shape
    C, Hkv, Dv = k_cache.shape[1], k_cache.shape[2], v_cache.shape[-1]
    _require(
        k_cache.shape == (B, C, Hkv, D) and v_cache.shape[:3] == (B, C, Hkv),
        f"expected k_cache (B={B}, C, Hkv, D={D}) and v_cache (B={B}, C, Hkv, Dv) agreeing on C and Hkv; got "
        f"{tuple(k_cache.shape)}, {tuple(v_cache.shape)}",
    )
    _require(Hkv >= 1 and H % Hkv == 0, f"expected H={H} query heads to be a multiple of Hkv={Hkv} kv heads")
    _require(
        1 <= D <= _MAX_HEAD_DIM and 1 <= Dv <= _MAX_HEAD_DIM,
        f"expected head dims in [1, {_MAX_HEAD_DIM}]; got D={D}, Dv={Dv}",
    )
    _require(
        q.stride(-1) == 1 and k_cache.stride(-1) == 1 and v_cache.stride(-1) == 1,
        f"expected q, k_cache, v_cache with a contiguous last dim; got strides {q.stride()}, {k_cache.stride()}, "
        f"{v_cache.stride()}",
    )
    _require(
        window is None or (isinstance(window, int) and not isinstance(window, bool) and window >= 1),
        f"expected window None or an int >= 1; got {window!r}",
    )
    _require(
        isinstance(sink_tokens, int) and 0 <= sink_tokens < C,
        f"expected sink_tokens an int in [0, C={C}) (the ring needs a slot); got {sink_tokens!r}",
    )
    _require(
        cache_seqlens.shape == (B,) and cache_seqlens.dtype in (torch.int32, torch.int64),
        f"expected cache_seqlens an int32/int64 ({B},) tensor; got {tuple(cache_seqlens.shape)} {cache_seqlens.dtype}",
    )
    if alibi_slopes is not None:
        _require(
            alibi_slopes.shape == (H,) and alibi_slopes.is_floating_point() and alibi_slopes.device == q.device,
            f"expected alibi_slopes a float ({H},) tensor on {q.device}; got {tuple(alibi_slopes.shape)} "
            f"{alibi_slopes.dtype} on {alibi_slopes.device}",
        )
    if rel_bias is not None:
        _require(
            rel_bias.dim() == 2
            and rel_bias.shape[0] == H
            and rel_bias.shape[1] >= 1
            and rel_bias.is_floating_point()
            and rel_bias.device == q.device,
            f"expected rel_bias a float (H={H}, R>=1) tensor on {q.device}; got {tuple(rel_bias.shape)} "
            f"{rel_bias.dtype} on {rel_bias.device}",
        )
    if cache_seqlens.device.type == "cpu":
        # Value checks need the values: done here only when they are already on the host (no device sync per
        # decode step on CUDA). Out-of-contract values on CUDA still never read out of bounds: every slot read is
        # in [0, C), and a negative length sees no key.
        _check_lengths(cache_seqlens, C, Tq, window, sink_tokens)


def _check_lengths(cache_seqlens, C, Tq, window, sink_tokens):
    lens = cache_seqlens.tolist()
    _require(min(lens, default=0) >= 0, f"expected cache_seqlens >= 0; got {lens}")
    longest = max(lens, default=0)
    if longest > C:  # the ring has wrapped: the keys a query needs are still there only if the ring is long enough
        need = "a window" if window is None else f"C >= window + sink_tokens + Tq - 1 = {window + sink_tokens + Tq - 1}"
        _require(
            window is not None and C >= window + sink_tokens + Tq - 1,
            f"cache_seqlens reaches {longest} > C={C} slots (the ring has wrapped), which needs {need}",
        )


@register_triton("swa_decode")
def swa_decode(
    q,
    k_cache,
    v_cache,
    cache_seqlens,
    window,
    *,
    softmax_scale=None,
    sink_tokens=0,
    alibi_slopes=None,
    rel_bias=None,
    num_splits=None,
):
    """Triton `fastllm.kernels.swa_decode`: o (B, Tq, H, Dv) in q's dtype (arguments as the reference).

    q (B, Tq, H, D), k_cache (B, C, Hkv, D), v_cache (B, C, Hkv, Dv): any strides with a contiguous last dim.
    cache_seqlens (B,) int32/int64 on q's device. alibi_slopes (H,) and rel_bias (H, R) are read as fp32.
    `num_splits` forces the number of key splits (1..MAX_SPLITS; a tuning and testing knob), else `_num_splits`.
    """
    _check_inputs(q, k_cache, v_cache, cache_seqlens, window, sink_tokens, alibi_slopes, rel_bias)
    B, Tq, H, D = q.shape
    C, Hkv, Dv = k_cache.shape[1], k_cache.shape[2], v_cache.shape[-1]
    G = H // Hkv
    o = torch.empty(B, Tq, H, Dv, dtype=q.dtype, device=q.device)
    if o.numel() == 0:
        return o

    cfg = _config(q.dtype, D, Dv, Tq * G, rel_bias is not None)
    m_blocks = triton.cdiv(Tq * G, cfg.block_m)
    if num_splits is None:
        max_keys = C if window is None else min(C, window + Tq - 1 + sink_tokens)
        num_splits = _num_splits(B * Hkv * m_blocks, max_keys, cfg.block_n, _sm_count(q.device))
    _require(
        isinstance(num_splits, int) and 1 <= num_splits <= MAX_SPLITS,
        f"expected num_splits an int in [1, {MAX_SPLITS}]; got {num_splits!r}",
    )

    scale = 1.0 / math.sqrt(D) if softmax_scale is None else float(softmax_scale)
    lens = cache_seqlens.to(torch.int32).contiguous()
    # Bias tables are tiny: read as fp32 so that the kernel has one signature whatever their dtype.
    unused = torch.empty(0, dtype=torch.float32, device=q.device)  # stands in for absent tensors, never read
    alibi = unused if alibi_slopes is None else alibi_slopes.to(torch.float32).contiguous()
    rel = unused if rel_bias is None else rel_bias.to(torch.float32).contiguous()
    if num_splits == 1:
        o_part = lse_part = unused
    else:
        o_part = torch.empty(B, Tq, H, num_splits, Dv, dtype=torch.float32, device=q.device)
        lse_part = torch.empty(B, Tq, H, num_splits, dtype=torch.float32, device=q.device)

    _swa_decode_kernel[(B * Hkv, m_blocks, num_splits)](
        q, k_cache, v_cache, lens, alibi, rel, o, o_part, lse_part,
        q.stride(0), q.stride(1), q.stride(2),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        Tq, H, Hkv, G, C, D, Dv,
        C if window is None else min(window, C),  # a window past C changes nothing while nothing has wrapped
        sink_tokens, rel.shape[-1] if rel_bias is not None else 1, int(alibi_slopes is not None), num_splits,
        scale * 1.4426950408889634,
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_D=cfg.block_d, HAS_REL_BIAS=cfg.has_rel_bias,
        UPCAST=q.dtype == torch.bfloat16 and interpret_mode(),
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )  # fmt: skip
    if num_splits > 1:
        _swa_decode_combine_kernel[(B * Tq * H, triton.cdiv(Dv, _COMBINE_BLOCK_DV))](
            o_part, lse_part, o, num_splits, Dv, BLOCK_S=MAX_SPLITS, BLOCK_DV=_COMBINE_BLOCK_DV
        )
    return o


def _aot_config(cfg: _Config) -> AOTConfig:
    ty = _DTYPES[cfg.dtype]
    signature = {name: "i32" for name in _swa_decode_kernel.arg_names}
    signature.update({f"{n}_ptr": f"*{ty}" for n in ("q", "k", "v", "o")}, seqlens_ptr="*i32", qk_scale="fp32")
    signature.update({f"{n}_ptr": "*fp32" for n in ("alibi", "rel", "o_part", "lse_part")})
    constexprs = {
        "BLOCK_M": cfg.block_m,
        "BLOCK_N": cfg.block_n,
        "BLOCK_D": cfg.block_d,
        "HAS_REL_BIAS": cfg.has_rel_bias,
        "UPCAST": False,
    }
    signature.update({name: "constexpr" for name in constexprs})
    tiles = f"BM={cfg.block_m},BN={cfg.block_n},BD={cfg.block_d},rel={int(cfg.has_rel_bias)},w={cfg.num_warps}"
    name = f"swa_decode[{ty},{tiles}]"
    return AOTConfig(name, _swa_decode_kernel, signature, constexprs, cfg.num_warps, cfg.num_stages)


def _combine_aot_config(dtype: torch.dtype) -> AOTConfig:
    ty = _DTYPES[dtype]
    signature = {"o_part_ptr": "*fp32", "lse_part_ptr": "*fp32", "o_ptr": f"*{ty}", "num_splits": "i32", "Dv": "i32"}
    constexprs = {"BLOCK_S": MAX_SPLITS, "BLOCK_DV": _COMBINE_BLOCK_DV}
    signature.update({name: "constexpr" for name in constexprs})
    return AOTConfig(f"swa_decode_combine[{ty}]", _swa_decode_combine_kernel, signature, constexprs)


def aot_configs() -> list[AOTConfig]:
    """Every specialisation `swa_decode` can launch on a GPU (`UPCAST` is for the interpreter only).

    Enumerated through `_config` itself: one head dim per BLOCK_D class, one row count per BLOCK_M class.
    """
    configs = []
    for dtype in _DTYPES:
        picked = {
            _config(dtype, head_dim, head_dim, rows, has_rel_bias)
            for head_dim in (64, 128, 256)
            for rows in (1, 64)
            for has_rel_bias in (False, True)
        }
        configs += [_aot_config(cfg) for cfg in sorted(picked, key=lambda c: (c.block_d, c.has_rel_bias, c.block_m))]
        configs.append(_combine_aot_config(dtype))
    return configs
