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

The kernels (device code) are in `decode_kernels.py`; this module holds their configurations, the checks and the
launcher.
"""

import functools
import math
from dataclasses import dataclass

import torch
import triton

from fastllm.kernels._dispatch import interpret_mode, register_triton
from fastllm.kernels.triton._aot import AOTConfig
from fastllm.kernels.triton.decode_kernels import _swa_decode_combine_kernel, _swa_decode_kernel

MAX_SPLITS = 128  # most splits of one row's keys: bounds the partial buffers and the combine's lse vector
_MIN_TILES_PER_SPLIT = 4  # a split below this many key tiles spends more on its setup and combine than it saves
_SM_COUNT_WITHOUT_GPU = 132  # an H100 SXM: what the split heuristic assumes when there is no CUDA device
_COMBINE_BLOCK_DV = 64  # output columns per combine program
_MAX_HEAD_DIM = 256
_DTYPES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


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
