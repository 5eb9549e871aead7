"""Triton sliding-window attention for prefill and training: FlashAttention-2 forward and backward.

Semantics are those of `fastllm.kernels.sliding_window_attention` (the oracle is
`fastllm.kernels.reference.attention`): query row t of a document sits at key index t + shift (bottom-right
alignment, shift = S - T; 0 inside a cu_seqlens document) and sees key j of its document iff
`0 <= dist < window or j is one of the document's first sink_tokens keys`, with dist = t + shift - j. Scores are
`softmax_scale * q.k - alibi_slope[h] * dist + rel_bias[h, min(dist, R - 1)]`.

The kernels (device code) are in `attention_kernels.py`; this module holds their tiles, the compiled
configurations and the launchers.

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

from fastllm.kernels._checks import _last_dim_contiguous
from fastllm.kernels._dispatch import interpret_mode, register_triton
from fastllm.kernels.triton._aot import AOTConfig
from fastllm.kernels.triton.attention_kernels import (
    _swa_bwd_delta_kernel,
    _swa_bwd_dkdv_kernel,
    _swa_bwd_dq_kernel,
    _swa_fwd_kernel,
)

_INT32_MAX = 2**31 - 1
_MAX_HEAD_DIM = 256


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
# to FMA dots, see `attention_kernels._dot`). The tests check that `aot_configs()` covers every entry.
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
