"""Absorbed-weight MLA decode (DeepSeek-V2 multi-head latent attention) over a latent, optionally paged, cache.

Every cached token is one row `[c_kv (R), k_rope (Dr)]` shared by all heads, so decode is memory-bound on reading
those rows: the kernels below read each row once per step and share it across a block of (head, query) pairs.

Stage 1, `_mla_decode_split_kernel` (split-KV / flash-decoding), grid (row blocks, splits, B):
  - rows: the H * Tq (head, query) pairs of a batch row, flattened head-major (row = h * Tq + t); a program takes
    BLOCK_M = 16 of them, i.e. 16 // Tq heads with all their queries (or 16 heads of one query when Tq = 1). Each
    latent tile (BLOCK_N tokens x (R + Dr)) is loaded once and used by all BLOCK_M rows for both products:
    scores = q_lat @ c^T + q_rope @ k_rope^T (BLOCK_M x BLOCK_N) and acc += p @ c (BLOCK_M x R). The row blocks
    of one (split, batch row) are neighbours in the grid (axis 0), so with H * Tq > 16 they run together and
    re-read the same tiles from L2, not from DRAM.
  - keys: the row's n = cache_seqlens[b] tokens are cut into `num_splits` ranges of whole BLOCK_N blocks; a
    program runs an online softmax over its range and writes its normalised partial output (fp32) and lse. Query
    t sits at position n - Tq + t and sees keys j <= that position (causal among the Tq new tokens).
  - R is not chunked: the fp32 accumulator is BLOCK_M x R (16 x 512: 32 registers a thread at 8 warps), Triton
    stages the loop-invariant q tile in shared memory, and no configuration spills (`aot_configs`, sm_80 and
    sm_90a). Computing q_lat . c in 64- or 128-wide chunks of R was measured too: no fewer registers, more shared
    memory, and a second read of the tile for p @ c.
  - paging: token s of row b lives at kv_cache[block_table[b, s // page_size], s % page_size]; the page is looked
    up per token, so any page size works and a block may straddle pages. A contiguous (B, S, .) cache is the
    one-page-per-row case (block_table = [[0], [1], ...], page_size = S). Loads are masked by s < n: slots past a
    row's length (the tail of its last page, unused pages) are never read, so NaN there cannot leak.
Stage 2, `_mla_combine_kernel`, grid (B * Tq * H,): merges the splits of one (b, t, h) row by their lse.

Split heuristic (`num_splits_for`): programs without splitting = B * cdiv(H * Tq, 16); if that already covers
the SMs, one split; otherwise enough splits for about two programs per SM (memory-bound: more loads in flight),
but at least MIN_SPLIT_KEYS = 256 cached tokens per split so that the partial output a split writes (<= 16 rows x R
fp32) stays small next to what it reads, and at most MAX_SPLITS = 64. The length used is the cache's capacity
(max_pages * page_size, or S), known without a host sync; shorter rows cut their own length into the same number
of ranges, so their programs stay balanced. The SM count is the device's, or 132 (H100 SXM) without CUDA.

Host syncs: none on CUDA. The value checks that need the contents of cache_seqlens and block_table (lengths within
the capacity, page ids inside the pool) run only for CPU tensors (the interpreter); on CUDA the kernel clamps
lengths to [0, capacity] and reads a page id outside the pool as zeros instead of touching memory out of bounds.
"""

import functools
import itertools
import math

import torch
import triton
import triton.language as tl

from fastllm.kernels._dispatch import interpret_mode, register_triton
from fastllm.kernels.triton._aot import AOTConfig

BLOCK_M = 16  # (head, query) rows per program: the tl.dot minimum; a 16 x 512 fp32 accumulator fits in registers
MAX_R = 512  # largest kv_lora_rank (DeepSeek-V2/V3); R is padded to a power of two >= 64
MAX_DR = 64  # largest rope dim; the rope part is always a 64-wide (masked) tile
MIN_SPLIT_KEYS = 256
MAX_SPLITS = 64
DEFAULT_SMS = 132  # H100 SXM, for the split heuristic when no CUDA device is visible
_DTYPES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
_LOG2E = 1.4426950408889634
_LN2 = tl.constexpr(0.6931471805599453)

# BLOCK_R -> (BLOCK_N, num_warps) per element size, num_stages 2. Picked from an AOT sweep (BLOCK_N 16/32/64 x 4/8
# warps, sm_80): the most cached rows in flight per SM (BLOCK_N x resident blocks) without spills. 16-bit caches run
# their dots on tensor cores; fp32 caches on FMA units (ieee precision), whose operands need more registers.
_TILES_16BIT = {64: (64, 4), 128: (64, 4), 256: (64, 8), 512: (32, 8)}
_TILES_FP32 = {64: (32, 4), 128: (32, 8), 256: (32, 8), 512: (16, 8)}
_NUM_STAGES = 2
_COMBINE_WARPS = 4


# Per-call sizes are not specialised: one compiled variant serves every batch, head count, query length and split
# count. With 16-aligned R, Dr, strides and page size (every real model) the variants launched are exactly those of
# `aot_configs`; odd sizes (tiny test models) get an unaligned variant of the same tiles.
@triton.jit(do_not_specialize=["stride_bt", "Tq", "H", "max_pages", "num_pages", "num_splits"])
def _mla_decode_split_kernel(
    q_ptr,  # (B, Tq, H, R + Dr), last dim contiguous
    kv_ptr,  # (num_pages, page_size, R + Dr) page pool, last dim contiguous
    seqlens_ptr,  # (B,) int32
    block_table_ptr,  # (B, max_pages) int32
    o_part_ptr,  # (B, Tq, H, num_splits, R) fp32, contiguous
    lse_part_ptr,  # (B, Tq, H, num_splits) fp32, contiguous
    qk_scale,  # softmax_scale * log2(e): the softmax runs in base 2
    stride_qb,
    stride_qt,
    stride_qh,
    stride_kv_page,
    stride_kv_slot,
    stride_bt,
    Tq,
    H,
    R,
    Dr,
    page_size,
    max_pages,
    num_pages,
    num_splits,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_DR: tl.constexpr,
    INTERPRET: tl.constexpr,  # tl.dot on bf16 is wrong in the interpreter: run its dots on fp32 copies
):
    pid_m, split, b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    # the row's length, clamped so that a bad value on CUDA (not validated there) cannot index past its block table
    n = tl.minimum(tl.maximum(tl.load(seqlens_ptr + b), 0), max_pages * page_size)
    split_len = tl.cdiv(tl.cdiv(n, num_splits), BLOCK_N) * BLOCK_N
    start = split * split_len
    end = tl.minimum(start + split_len, n)

    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # (BLOCK_M,) row = h * Tq + t
    row_ok = rows < H * Tq
    h, t = rows // Tq, rows % Tq
    q_pos = n - Tq + t  # (BLOCK_M,) absolute position of each row's query
    offs_r = tl.arange(0, BLOCK_R)
    offs_d = tl.arange(0, BLOCK_DR)
    r_ok, d_ok = offs_r < R, offs_d < Dr

    q_row = q_ptr + b.to(tl.int64) * stride_qb + t * stride_qt + h * stride_qh  # (BLOCK_M,) pointers
    q_lat = tl.load(q_row[:, None] + offs_r[None, :], mask=row_ok[:, None] & r_ok[None, :], other=0.0)
    q_rope = tl.load(q_row[:, None] + R + offs_d[None, :], mask=row_ok[:, None] & d_ok[None, :], other=0.0)
    if INTERPRET:
        q_lat, q_rope = q_lat.to(tl.float32), q_rope.to(tl.float32)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)  # running max of the base-2 scores
    l_i = tl.zeros([BLOCK_M], tl.float32)  # running sum of exp2(score - m_i)
    acc = tl.zeros([BLOCK_M, BLOCK_R], tl.float32)  # running sum of p * c
    table = block_table_ptr + b.to(tl.int64) * stride_bt
    for k0 in range(start, end, BLOCK_N):
        offs_n = k0 + tl.arange(0, BLOCK_N)  # (BLOCK_N,) token positions
        key_ok = offs_n < end
        page = tl.load(table + offs_n // page_size, mask=key_ok, other=0)
        # a page id outside the pool (only possible unvalidated, on CUDA) reads as zeros, never out of bounds
        load_ok = key_ok & (page >= 0) & (page < num_pages)
        kv_row = kv_ptr + page.to(tl.int64) * stride_kv_page + (offs_n % page_size) * stride_kv_slot  # (BLOCK_N,)
        c = tl.load(kv_row[:, None] + offs_r[None, :], mask=load_ok[:, None] & r_ok[None, :], other=0.0)
        k_rope = tl.load(kv_row[:, None] + R + offs_d[None, :], mask=load_ok[:, None] & d_ok[None, :], other=0.0)
        c_mm = c
        if INTERPRET:
            c_mm, k_rope = c.to(tl.float32), k_rope.to(tl.float32)

        # "ieee": an fp32 cache must not be rounded to tf32 (16-bit operands ignore the setting)
        s = tl.dot(q_rope, tl.trans(k_rope), input_precision="ieee")  # (BLOCK_M, BLOCK_N)
        s = tl.dot(q_lat, tl.trans(c_mm), s, input_precision="ieee")
        visible = key_ok[None, :] & (offs_n[None, :] <= q_pos[:, None])
        s = tl.where(visible, s * qk_scale, float("-inf"))

        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        m_base = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows that saw nothing yet: exp2(-inf - 0) = 0
        alpha = tl.math.exp2(m_i - m_base)
        p = tl.math.exp2(s - m_base[:, None])  # (BLOCK_M, BLOCK_N)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        # p rounds to the cache dtype for the tensor-core product, as on the GPU; the interpreter then widens it
        p_mm = p.to(c.dtype).to(tl.float32) if INTERPRET else p.to(c.dtype)
        acc = tl.dot(p_mm, c_mm, acc * alpha[:, None], input_precision="ieee")
        m_i = m_new

    seen = l_i > 0.0
    l_safe = tl.where(seen, l_i, 1.0)
    o = acc / l_safe[:, None]  # rows that saw no key: 0 (acc is 0)
    lse = tl.where(seen, (m_i + tl.math.log2(l_safe)) * _LN2, float("-inf"))  # natural log
    part = ((b.to(tl.int64) * Tq + t) * H + h) * num_splits + split  # (BLOCK_M,) index into (B, Tq, H, splits)
    tl.store(lse_part_ptr + part, lse, mask=row_ok)
    tl.store(o_part_ptr + part[:, None] * R + offs_r[None, :], o, mask=row_ok[:, None] & r_ok[None, :])


@triton.jit(do_not_specialize=["num_splits"])
def _mla_combine_kernel(
    o_part_ptr,  # (B * Tq * H, num_splits, R) fp32, contiguous
    lse_part_ptr,  # (B * Tq * H, num_splits) fp32, contiguous
    o_ptr,  # (B * Tq * H, R) in q's dtype, contiguous
    lse_ptr,  # (B * Tq * H,) fp32
    R,
    num_splits,
    BLOCK_R: tl.constexpr,
    BLOCK_S: tl.constexpr,  # >= num_splits
):
    row = tl.program_id(0).to(tl.int64)
    offs_s = tl.arange(0, BLOCK_S)
    offs_r = tl.arange(0, BLOCK_R)
    lse_s = tl.load(lse_part_ptr + row * num_splits + offs_s, mask=offs_s < num_splits, other=float("-inf"))
    m = tl.max(lse_s, axis=0)
    m = tl.where(m == float("-inf"), 0.0, m)
    total = tl.sum(tl.exp(lse_s - m), axis=0)  # empty splits (lse = -inf) weigh 0
    acc = tl.zeros([BLOCK_R], tl.float32)
    for s in range(num_splits):
        w = tl.exp(tl.load(lse_part_ptr + row * num_splits + s) - m)
        # stage 1 writes every split (zeros for an empty one), so nothing read here is garbage
        acc += w * tl.load(o_part_ptr + (row * num_splits + s) * R + offs_r, mask=offs_r < R, other=0.0)
    total_safe = tl.where(total > 0.0, total, 1.0)  # a row that saw no key: o = 0, lse = -inf
    tl.store(o_ptr + row * R + offs_r, (acc / total_safe).to(o_ptr.dtype.element_ty), mask=offs_r < R)
    tl.store(lse_ptr + row, tl.where(total > 0.0, m + tl.log(total_safe), float("-inf")))


# ---- launcher -----------------------------------------------------------------------------------------------------


def _require(cond: bool, msg: str) -> None:
    if not cond:
        raise ValueError(f"mla_decode (triton): {msg}")


def _block_r(R: int) -> int:
    return max(64, triton.next_power_of_2(R))


@functools.lru_cache(maxsize=None)
def _sm_count(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return DEFAULT_SMS


def num_splits_for(batch: int, rows: int, max_len: int, sms: int) -> int:
    """Splits of the key range for `batch` rows of `rows` (head, query) pairs over at most `max_len` cached tokens
    on a device with `sms` SMs (the heuristic of the module docstring)."""
    programs = batch * triton.cdiv(rows, BLOCK_M)
    if programs >= sms:
        return 1
    want = triton.cdiv(2 * sms, programs)
    return max(1, min(want, max_len // MIN_SPLIT_KEYS, MAX_SPLITS))


def _check_index_tensor(name: str, x: torch.Tensor, shape: str, dim: int, B: int, device: torch.device) -> None:
    _require(x.dim() == dim and x.shape[0] == B, f"{name} must be {shape} with B={B}, got {tuple(x.shape)}")
    _require(x.dtype in (torch.int32, torch.int64), f"{name} must be int32 or int64, got {x.dtype}")
    _require(x.device == device, f"{name} is on {x.device}, q on {device}")


@register_triton("mla_decode")
def mla_decode(q, kv_cache, cache_seqlens, *, kv_lora_rank, softmax_scale, block_table=None, num_splits=None):
    """Triton `fastllm.kernels.mla_decode`: (o_latent (B, Tq, H, R) in q's dtype, lse (B, Tq, H) fp32).

    Same arguments and results as the reference (see `fastllm.kernels.mla_decode`), plus `num_splits`: force the
    number of key-range splits (1..64; tests use it), instead of the heuristic of the module docstring.
    Requires R <= 512, Dr <= 64, last dims contiguous, and CUDA tensors (or CPU ones under TRITON_INTERPRET=1).
    """
    _require(
        q.dim() == 4 and kv_cache.dim() == 3,
        f"q must be (B, Tq, H, R + Dr) and kv_cache 3-D, got {tuple(q.shape)} and {tuple(kv_cache.shape)}",
    )
    B, Tq, H, D = q.shape
    R = kv_lora_rank
    Dr = D - R
    _require(q.dtype in _DTYPES, f"q must be float32, float16 or bfloat16, got {q.dtype}")
    _require(kv_cache.dtype == q.dtype, f"kv_cache dtype {kv_cache.dtype} differs from q dtype {q.dtype}")
    _require(kv_cache.device == q.device, f"kv_cache is on {kv_cache.device}, q on {q.device}")
    _require(
        q.device.type == "cuda" or (q.device.type == "cpu" and interpret_mode()),
        f"tensors must be on CUDA (or on the CPU with TRITON_INTERPRET=1), got {q.device}",
    )
    _require(
        isinstance(R, int) and 0 < R <= MAX_R and 0 <= Dr <= MAX_DR,
        f"kv_lora_rank must be in 1..{MAX_R} with a rope dim (q.shape[-1] - kv_lora_rank) in 0..{MAX_DR}, got "
        f"kv_lora_rank={R} for q.shape[-1]={D}",
    )
    _require(kv_cache.shape[-1] == D, f"kv_cache rows hold {kv_cache.shape[-1]} values, q has {D} = R + Dr")
    _require(
        q.stride(-1) == 1 and kv_cache.stride(-1) == 1,
        f"q and kv_cache need a contiguous last dim, got strides {q.stride()} and {kv_cache.stride()}",
    )
    _require(math.isfinite(softmax_scale), f"softmax_scale must be a finite float, got {softmax_scale}")
    _check_index_tensor("cache_seqlens", cache_seqlens, "(B,)", 1, B, q.device)
    if block_table is None:
        _require(kv_cache.shape[0] == B, f"a contiguous kv_cache must be (B={B}, S, {D}), got {tuple(kv_cache.shape)}")
        # one page per row: token s of row b at kv_cache[b, s]
        block_table = torch.arange(B, dtype=torch.int32, device=q.device)[:, None]
    else:
        _check_index_tensor("block_table", block_table, "(B, max_pages)", 2, B, q.device)
        _require(
            kv_cache.shape[1] >= 16 and kv_cache.shape[1] % 16 == 0,
            f"page_size (kv_cache.shape[1]) must be a positive multiple of 16, got {kv_cache.shape[1]}",
        )
    num_pages, page_size = kv_cache.shape[:2]
    max_pages = block_table.shape[1]
    capacity = max_pages * page_size
    if q.device.type == "cpu":  # value checks need the contents: only where reading them costs no device sync
        lens = cache_seqlens.tolist()
        _require(
            all(0 <= n <= capacity for n in lens),
            f"cache_seqlens must be in 0..{capacity} (max_pages * page_size), got {lens}",
        )
        used = [(b, block_table[b, : triton.cdiv(n, page_size)]) for b, n in enumerate(lens) if n > 0]
        bad = [(b, pages.tolist()) for b, pages in used if pages.min() < 0 or pages.max() >= num_pages]
        _require(not bad, f"block_table names pages outside the pool of {num_pages} (row, pages): {bad}")
    if B * Tq * H == 0:  # nothing to launch
        return q.new_zeros(B, Tq, H, R), torch.full((B, Tq, H), -math.inf, device=q.device)

    if num_splits is None:
        num_splits = num_splits_for(B, H * Tq, capacity, _sm_count(q.device))
    _require(
        isinstance(num_splits, int) and 1 <= num_splits <= MAX_SPLITS,
        f"num_splits must be an int in 1..{MAX_SPLITS}, got {num_splits!r}",
    )
    seqlens = cache_seqlens.to(torch.int32).contiguous()
    block_table = block_table.to(torch.int32).contiguous()  # the kernel steps through a row's pages with stride 1
    block_r = _block_r(R)
    block_n, num_warps = (_TILES_FP32 if q.dtype == torch.float32 else _TILES_16BIT)[block_r]

    o_part = torch.empty(B, Tq, H, num_splits, R, dtype=torch.float32, device=q.device)
    lse_part = torch.empty(B, Tq, H, num_splits, dtype=torch.float32, device=q.device)
    grid = (triton.cdiv(H * Tq, BLOCK_M), num_splits, B)
    _mla_decode_split_kernel[grid](
        q,
        kv_cache,
        seqlens,
        block_table,
        o_part,
        lse_part,
        float(softmax_scale) * _LOG2E,
        *q.stride()[:3],
        kv_cache.stride(0),
        kv_cache.stride(1),
        block_table.stride(0),
        Tq,
        H,
        R,
        Dr,
        page_size,
        max_pages,
        num_pages,
        num_splits,
        BLOCK_M=BLOCK_M,
        BLOCK_N=block_n,
        BLOCK_R=block_r,
        BLOCK_DR=MAX_DR,
        INTERPRET=interpret_mode(),
        num_warps=num_warps,
        num_stages=_NUM_STAGES,
    )
    o = torch.empty(B, Tq, H, R, dtype=q.dtype, device=q.device)
    lse = torch.empty(B, Tq, H, dtype=torch.float32, device=q.device)
    _mla_combine_kernel[(B * Tq * H,)](
        o_part, lse_part, o, lse, R, num_splits, BLOCK_R=block_r, BLOCK_S=MAX_SPLITS, num_warps=_COMBINE_WARPS
    )
    return o, lse


# ---- ahead-of-time configurations ---------------------------------------------------------------------------------

_STAGE1_INTS = ("stride_qb", "stride_qt", "stride_qh", "stride_kv_page", "stride_kv_slot", "stride_bt", "Tq", "H", "R")
_STAGE1_INTS += ("Dr", "page_size", "max_pages", "num_pages", "num_splits")


def aot_configs() -> list[AOTConfig]:
    """Every specialisation the launcher can launch: stage 1 and the combine kernel per (dtype, BLOCK_R)."""
    configs = []
    for (dtype, t), block_r in itertools.product(_DTYPES.items(), _TILES_16BIT):
        block_n, num_warps = (_TILES_FP32 if dtype == torch.float32 else _TILES_16BIT)[block_r]
        signature = {"q_ptr": f"*{t}", "kv_ptr": f"*{t}", "seqlens_ptr": "*i32", "block_table_ptr": "*i32"}
        signature |= {"o_part_ptr": "*fp32", "lse_part_ptr": "*fp32", "qk_scale": "fp32"}
        signature |= dict.fromkeys(_STAGE1_INTS, "i32")
        constexprs = dict(BLOCK_M=BLOCK_M, BLOCK_N=block_n, BLOCK_R=block_r, BLOCK_DR=MAX_DR, INTERPRET=False)
        signature |= dict.fromkeys(constexprs, "constexpr")
        configs.append(
            AOTConfig(
                name=f"mla_decode_split[{t},BLOCK_M={BLOCK_M},BLOCK_N={block_n},BLOCK_R={block_r}]",
                fn=_mla_decode_split_kernel,
                signature=signature,
                constexprs=constexprs,
                num_warps=num_warps,
                num_stages=_NUM_STAGES,
            )
        )
        signature = {"o_part_ptr": "*fp32", "lse_part_ptr": "*fp32", "o_ptr": f"*{t}", "lse_ptr": "*fp32"}
        signature |= {"R": "i32", "num_splits": "i32", "BLOCK_R": "constexpr", "BLOCK_S": "constexpr"}
        configs.append(
            AOTConfig(
                name=f"mla_combine[{t},BLOCK_R={block_r}]",
                fn=_mla_combine_kernel,
                signature=signature,
                constexprs={"BLOCK_R": block_r, "BLOCK_S": MAX_SPLITS},
                num_warps=_COMBINE_WARPS,
            )
        )
    return configs
