"""Launcher of the C++ decode attention kernel (csrc/cpu/attention.h): validation, then raw pointers to `fastllm._cpu`.

A decode step attends once per layer for one new token per row; torch's SDPA, with the ring-buffer bookkeeping of
the reference around it, spends ~190 us per call on GPT-2's 12 heads at batch 1 (measured), the kernel a few. It
takes the general case of `fastllm.kernels.swa_decode`: the ring layout, windows and sinks, GQA, Tq new queries per
row, ALiBi and relative-position biases, fp32 and bf16. Everything the C++ side reads is checked here first.
"""

import torch

from fastllm import _cpu
from fastllm.kernels.cpu.linear import DTYPE_CODES, X_DTYPES, _fail, threads


def supports(q: torch.Tensor) -> bool:
    """Whether `swa_decode` runs the C++ kernel for these queries: fp32 or bf16 CPU tensors."""
    return q.is_cpu and q.dtype in X_DTYPES


def _strides(x: torch.Tensor, name: str) -> tuple[int, int, int]:
    if x.stride(-1) != 1 and x.shape[-1] > 1:
        _fail(f"swa_decode: {name}'s last dimension must be contiguous, got strides {x.stride()}")
    return x.stride(0), x.stride(1), x.stride(2)


def _seqlens(op: str, cache_seqlens: torch.Tensor, B: int) -> tuple[torch.Tensor, list[int]]:
    """The (B,) int64 contiguous lengths the C++ side reads, and their host copy (one read: B is a batch size),
    checked: an integer (B,) CPU tensor of values >= 0."""
    if cache_seqlens.shape != (B,) or cache_seqlens.is_floating_point() or not cache_seqlens.is_cpu:
        _fail(f"{op}: cache_seqlens must be an integer ({B},) CPU tensor, got {tuple(cache_seqlens.shape)} "
              f"{cache_seqlens.dtype} on {cache_seqlens.device}")  # fmt: skip
    lens = cache_seqlens.to(torch.int64).contiguous()
    seen = lens.tolist()
    if any(n < 0 for n in seen):
        raise ValueError(f"{op}: cache_seqlens must be >= 0, got {seen}")
    return lens, seen


def swa_decode(q, k_cache, v_cache, cache_seqlens, window, softmax_scale, sink_tokens, alibi_slopes, rel_bias):
    """`fastllm.kernels.swa_decode` (window None or >= 1) on the CPU: o (B, Tq, H, Dv) in q's dtype."""
    if q.dim() != 4 or k_cache.dim() != 4 or v_cache.dim() != 4:
        _fail(f"swa_decode: q, k_cache, v_cache must be 4-D, got {tuple(q.shape)}, {tuple(k_cache.shape)}, "
              f"{tuple(v_cache.shape)}")  # fmt: skip
    caches = (k_cache, v_cache)
    if not supports(q) or any(c.dtype != q.dtype or not c.is_cpu for c in caches):
        got = ", ".join(f"{x.dtype} on {x.device}" for x in (q, *caches))
        _fail(f"swa_decode: q, k_cache, v_cache must be float32 or bfloat16 CPU tensors of one dtype, got {got}")
    B, Tq, H, D = q.shape
    _, C, Hkv, Dv = v_cache.shape
    if k_cache.shape[:3] != (B, C, Hkv) or v_cache.shape[0] != B or k_cache.shape[3] != D or Hkv < 1 or H % Hkv:
        _fail(f"swa_decode: k_cache {tuple(k_cache.shape)} and v_cache {tuple(v_cache.shape)} do not fit q "
              f"{tuple(q.shape)}: expected (B={B}, C, Hkv, D={D}) and (B, C, Hkv, Dv) with H % Hkv == 0")  # fmt: skip
    if not 0 <= sink_tokens < C:
        _fail(f"swa_decode: C={C} slots leave no ring after sink_tokens={sink_tokens}")
    if window is not None and window < 1:
        _fail(f"swa_decode: window must be None or >= 1, got {window}")
    lens, seen = _seqlens("swa_decode", cache_seqlens, B)
    if B:
        if max(seen) > C and (window is None or C < window + sink_tokens + Tq - 1):
            need = "every token cached" if window is None else "C >= window + sink_tokens + Tq - 1"
            raise ValueError(
                f"swa_decode: cache_seqlens reaches {max(seen)} > C={C} slots (the ring has wrapped), which "
                f"needs {need} (window={window}, sink_tokens={sink_tokens}, Tq={Tq})"
            )
    if alibi_slopes is not None:
        if alibi_slopes.shape != (H,) or not alibi_slopes.is_cpu:
            _fail(f"swa_decode: alibi_slopes must be ({H},) on the CPU, got {tuple(alibi_slopes.shape)}")
        alibi_slopes = alibi_slopes.to(torch.float32).contiguous()
    if rel_bias is not None:
        if rel_bias.dim() != 2 or rel_bias.shape[0] != H or rel_bias.shape[1] < 1 or not rel_bias.is_cpu:
            _fail(f"swa_decode: rel_bias must be (H={H}, R>=1) on the CPU, got {tuple(rel_bias.shape)}")
        rel_bias = rel_bias.to(torch.float32).contiguous()
    o = torch.empty(B, Tq, H, Dv, dtype=q.dtype)  # (B, Tq, H, Dv)
    if o.numel() == 0:
        return o
    _cpu.decode_attention(
        DTYPE_CODES[q.dtype], (B, Tq, H, Hkv, C, D, Dv),
        q.data_ptr(), _strides(q, "q"), k_cache.data_ptr(), _strides(k_cache, "k_cache"),
        v_cache.data_ptr(), _strides(v_cache, "v_cache"), lens.data_ptr(),
        0 if window is None else window, sink_tokens, float(softmax_scale),
        0 if alibi_slopes is None else alibi_slopes.data_ptr(),
        0 if rel_bias is None else rel_bias.data_ptr(), 0 if rel_bias is None else rel_bias.shape[1],
        o.data_ptr(), threads(),
    )  # fmt: skip
    return o


def mla_decode(q, kv_cache, cache_seqlens, kv_lora_rank, softmax_scale, block_table):
    """`fastllm.kernels.mla_decode` on the CPU: (o_latent (B, Tq, H, R) in q's dtype, lse (B, Tq, H) fp32).

    The decode attention kernel with one kv head shared by the H query heads: k is the whole latent row
    [c_kv, k_rope] (R + Dr), v its first R values (a view of the same rows), no window; a paged pool is addressed
    through block_table. Shapes and dtypes were checked by the public wrapper; what the C++ side reads is checked
    here (strides, lengths, the pages each row uses)."""
    B, Tq, H, D = q.shape
    if not supports(q) or kv_cache.dtype != q.dtype or not kv_cache.is_cpu:
        _fail(f"mla_decode: q and kv_cache must be float32 or bfloat16 CPU tensors of one dtype, got {q.dtype} on "
              f"{q.device} and {kv_cache.dtype} on {kv_cache.device}")  # fmt: skip
    if kv_cache.dim() != 3 or kv_cache.shape[2] != D or not 0 < kv_lora_rank <= D:
        _fail(f"mla_decode: kv_cache must be (.., .., {D}) with 0 < kv_lora_rank <= {D}, got "
              f"{tuple(kv_cache.shape)}, kv_lora_rank={kv_lora_rank}")  # fmt: skip
    lens, seen = _seqlens("mla_decode", cache_seqlens, B)
    paged = ()
    if block_table is None:
        for b, n in enumerate(seen):
            if n > kv_cache.shape[1]:
                raise ValueError(f"mla_decode: cache_seqlens[{b}] = {n} exceeds the cache length {kv_cache.shape[1]}")
    else:
        bt = block_table
        if bt.dim() != 2 or bt.shape[0] != B or bt.is_floating_point() or not bt.is_cpu:
            _fail(f"mla_decode: block_table must be an integer (B={B}, max_pages) CPU tensor, got "
                  f"{tuple(block_table.shape)} {block_table.dtype} on {block_table.device}")  # fmt: skip
        page_size, pool = kv_cache.shape[1], kv_cache.shape[0]
        table = block_table.to(torch.int64).contiguous()  # (B, max_pages)
        for b, n in enumerate(seen):
            used = -(-n // page_size)
            if used > table.shape[1]:
                raise ValueError(
                    f"mla_decode: cache_seqlens[{b}] = {n} needs {used} pages, block_table has {table.shape[1]}"
                )
            pages = table[b, :used]
            if used and (int(pages.min()) < 0 or int(pages.max()) >= pool):
                raise ValueError(
                    f"mla_decode: block_table[{b}] names pages outside the pool of {pool}: {pages.tolist()}"
                )
        paged = (table.data_ptr(), table.stride(0), table.shape[1], page_size)
    o = torch.empty(B, Tq, H, kv_lora_rank, dtype=q.dtype)  # (B, Tq, H, R)
    lse = torch.empty(B, Tq, H, dtype=torch.float32)  # (B, Tq, H)
    if o.numel() == 0:
        return o, lse
    kv = kv_cache[:, :, None]  # (B or pages, S, 1, R + Dr): one kv head, read as k and (its first R values) as v
    kv_strides = _strides(kv, "kv_cache")
    _cpu.decode_attention(
        DTYPE_CODES[q.dtype], (B, Tq, H, 1, kv_cache.shape[1], D, kv_lora_rank),
        q.data_ptr(), _strides(q, "q"), kv.data_ptr(), kv_strides, kv.data_ptr(), kv_strides, lens.data_ptr(),
        0, 0, float(softmax_scale), 0, 0, 0, o.data_ptr(), threads(), lse=lse.data_ptr(), paged=paged,
    )  # fmt: skip
    return o, lse
