"""Triton sliding-window attention: O(T * W) work, and forward + backward time against the baselines users have.

- `test_swa_key_tiles`: the tiles the kernels visit per head (forward and dq: key tiles per query block; dk/dv: query
  tiles per key block), from the launchers' own tile table and the kernels' band arithmetic, the forward's
  cross-checked against a brute-force count of the tiles holding a visible (query, key) pair. With the window fixed
  and T doubling the counts double (the dk/dv blocks holding sink keys walk to the end: one block, O(T)), where
  full causal attention's (the `_causal` columns) quadruple. No timing; the counts go to extra_info and the table.
- `test_swa_interpreter_scaling`: the Triton forward + backward run by Triton's interpreter on the CPU (the only way
  to run them without a GPU), timed as a proxy of the work: with the window fixed, time doubles with T.
  Needs TRITON_INTERPRET=1 (set by benches/conftest.py when there is no CUDA device).
- `test_swa_cpu_fwd_bwd`: forward + backward on the CPU, fp32, of the eager reference (`fastllm.kernels.reference`,
  query blocks against their key band: what fastllm runs on a CPU) against `F.scaled_dot_product_attention` with a
  dense (T, T) window mask, the strongest CPU baseline for windowed attention. Equivalence is checked first.
- `test_swa_cuda`: forward + backward TFLOP/s in bf16 (FLOPs of the visible band only: 2 matmuls forward, 5 backward,
  2 * D flops per visible pair each) of the Triton kernels against flash-attn's `window_size` when installed and SDPA
  with a window mask (or is_causal when the window covers T). Skipped without CUDA.

Run with `pytest benches/bench_attention.py --benchmark`.
"""

import math
import os

import pytest
import torch
import torch.nn.functional as F

from fastllm.kernels import reference as ref

H, HKV, D, WINDOW, SINKS = 8, 2, 64, 256, 4


# ---- work ----------------------------------------------------------------------------------------------------


def visible_pairs(T: int, S: int, window: int, sinks: int) -> int:
    """Number of (query, key) pairs the mask lets through (bottom-right aligned queries, one head)."""
    p = torch.arange(S - T, S)
    band = torch.clamp(p + 1, max=window).sum().item()  # keys p - W < j <= p
    extra = sum(max(0, min(sinks, int(q) - window + 1)) for q in p.tolist())  # sinks outside the band
    return int(band + extra)


def key_tiles(T: int, S: int, window: int, sinks: int, block_q: int, block_k: int) -> int:
    """Key tiles of `block_k` keys visited by the query tiles of `block_q` rows (one head): sink tiles + band tiles.

    The host-side mirror of `_band` for one document: what a forward or dq program visits."""
    total = 0
    for q0 in range(0, T, block_q):
        q1 = min(q0 + block_q, T)
        band_lo, band_hi = max(0, q0 + S - T - window + 1), min(q1 + S - T, S)
        sink_end = min(sinks, band_lo)
        total += math.ceil(max(sink_end, 0) / block_k) + math.ceil(max(band_hi - band_lo, 0) / block_k)
    return total


def query_tiles(T: int, S: int, window: int, sinks: int, block_k: int, block_q: int) -> int:
    """Query tiles visited by the dk/dv programs of `block_k` keys (one head): from the first query that reaches the
    key block to the last whose window covers it; a block holding sink keys is seen by every later query."""
    total = 0
    for k0 in range(0, S, block_k):
        k1 = min(k0 + block_k, S)
        t_lo = max(0, k0 - (S - T))
        t_hi = T if k0 < sinks else min(T, k1 + window - 1 - (S - T))
        total += math.ceil(max(t_hi - t_lo, 0) / block_q)
    return total


def brute_force_tiles(T: int, S: int, window: int, sinks: int, block_q: int, block_k: int) -> int:
    """Lower bound on the tiles any tiling aligned like the kernel's must touch: per query tile, the number of
    block_k-wide key groups (sinks from 0, the band from its first visible key) holding a visible pair."""
    p = torch.arange(S - T, S)[:, None]
    j = torch.arange(S)[None, :]
    visible = (j <= p) & ((p - j < window) | (j < sinks))
    total = 0
    for q0 in range(0, T, block_q):
        rows = visible[q0 : q0 + block_q].any(0).nonzero().flatten()
        q1 = min(q0 + block_q, T)
        band_lo = max(0, q0 + S - T - window + 1)
        sink_cols, band_cols = rows[rows < band_lo], rows[rows >= band_lo]
        total += len(set((sink_cols // block_k).tolist())) + len(set(((band_cols - band_lo) // block_k).tolist()))
        assert not len(band_cols) or band_cols.max() < q1 + S - T
    return total


@pytest.mark.parametrize("T", [1024, 2048, 4096, 8192, 16384])
def test_swa_key_tiles(bench, T):
    from fastllm.kernels.triton import attention as A

    counts = {}
    for kind in ("fwd", "dq", "dkdv"):
        tiles = A._TILES[(kind, False, 64, False)]  # bf16, D = 64
        bm, bn = tiles.block_m, tiles.block_n
        count = key_tiles if kind != "dkdv" else query_tiles  # dk/dv: BLOCK_N keys against BLOCK_M-query tiles
        counts[kind] = count(T, T, WINDOW, SINKS, *((bm, bn) if kind != "dkdv" else (bn, bm)))
        counts[f"{kind}_causal"] = count(T, T, T, 0, *((bm, bn) if kind != "dkdv" else (bn, bm)))
        if T <= 4096 and kind != "dkdv":
            assert counts[kind] == brute_force_tiles(T, T, WINDOW, SINKS, bm, bn)
    bench(lambda: None, rounds=1, warmup_rounds=0)  # nothing to time: the counts are the result
    bench.info(provider="triton", shape=f"T={T} W={WINDOW} sinks={SINKS} D=64 bf16", T=T, **counts)
    bench.row(bench="swa_key_tiles", T=T, W=WINDOW, **counts, pairs=visible_pairs(T, T, WINDOW, SINKS))


@pytest.mark.parametrize("T", [256, 512, 1024, 2048])
def test_swa_interpreter_scaling(bench, T):
    if torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("the interpreter proxy is for machines without a GPU (TRITON_INTERPRET=1)")
    from fastllm.kernels.triton import attention as A

    g = torch.Generator().manual_seed(T)
    q, k, v = (torch.randn(1, T, h, 32, generator=g) for h in (2, 1, 1))
    do = torch.randn(1, T, 2, 32, generator=g)

    def fwd_bwd():
        o, lse = A.sliding_window_attention(q, k, v, 64)
        return A.sliding_window_attention_backward(do, q, k, v, o, lse, 64)

    dq, dk, dv, _ = fwd_bwd()
    qd, kd, vd = (x.double().requires_grad_() for x in (q, k, v))
    ref.sliding_window_attention(qd, kd, vd, 64).backward(do.double())
    for got, x in zip((dq, dk, dv), (qd, kd, vd)):
        torch.testing.assert_close(got.double(), x.grad, atol=1e-4, rtol=1e-4)
    bench(fwd_bwd, rounds=2)
    bench.info(provider="triton-interpreter", shape=f"T={T} W=64 H=2 Hkv=1 D=32 fp32", T=T)
    if bench.median_s is not None:
        bench.row(bench="swa_interpreter", T=T, W=64, ms=round(1e3 * bench.median_s, 1))


def dense_mask(T: int, S: int, window: int, sinks: int) -> torch.Tensor:
    p, j = S - T + torch.arange(T)[:, None], torch.arange(S)[None, :]
    return (j <= p) & ((p - j < window) | (j < sinks))


def sdpa_dense(q, k, v, mask):
    """SDPA with an explicit (T, S) window mask; K and V repeated to H heads (SDPA's CPU kernels want equal heads)."""
    G = q.shape[2] // k.shape[2]
    kh, vh = (x.repeat_interleave(G, dim=2).transpose(1, 2) for x in (k, v))
    return F.scaled_dot_product_attention(q.transpose(1, 2), kh, vh, attn_mask=mask).transpose(1, 2)


@pytest.mark.parametrize("provider", ["reference", "sdpa-dense"])
@pytest.mark.parametrize("T", [1024, 2048, 4096])
def test_swa_cpu_fwd_bwd(bench, T, provider):
    g = torch.Generator().manual_seed(T)
    q, k, v = (torch.randn(1, T, h, D, generator=g).requires_grad_() for h in (H, HKV, HKV))
    do = torch.randn(1, T, H, D, generator=g)
    mask = dense_mask(T, T, WINDOW, SINKS)

    def run(name):
        if name == "reference":
            return ref.sliding_window_attention(q, k, v, WINDOW, sink_tokens=SINKS)
        return sdpa_dense(q, k, v, mask)

    def fwd_bwd():
        return torch.autograd.grad(run(provider), (q, k, v), do)

    if T == 1024:  # equivalence first
        other = "sdpa-dense" if provider == "reference" else "reference"
        want = torch.autograd.grad(run(other), (q, k, v), do)
        for a, b in zip(fwd_bwd(), want):
            torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    bench(fwd_bwd, rounds=3)
    flops = 7 * 2 * D * H * visible_pairs(T, T, WINDOW, SINKS)
    bench.info(provider=provider, shape=f"T={T} W={WINDOW} sinks={SINKS} H={H} Hkv={HKV} D={D} fp32", T=T)
    if bench.median_s is not None:
        gflops = flops / bench.median_s / 1e9
        bench.extra_info.update(gflop_per_s=round(gflops, 1), threads=torch.get_num_threads())
        bench.row(bench="swa_cpu_fwd_bwd", provider=provider, T=T, ms=round(1e3 * bench.median_s, 1), gflops=gflops)


def flash_attn_or_none():
    try:
        from flash_attn import flash_attn_func
    except ImportError:
        return None
    return flash_attn_func


@pytest.mark.parametrize("provider", ["triton", "flash-attn", "sdpa"])
@pytest.mark.parametrize("T,window", [(4096, 1024), (8192, 1024), (16384, 1024), (8192, 8192)])
def test_swa_cuda(bench, T, window, provider):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    flash = flash_attn_or_none()
    if provider == "flash-attn" and flash is None:
        pytest.skip("flash-attn is not installed")
    from fastllm.kernels.triton import attention as A

    B, Hq, Hk, Dh = 2, 16, 4, 128
    g = torch.Generator().manual_seed(T)
    q, k, v = (torch.randn(B, T, h, Dh, generator=g).to("cuda", torch.bfloat16).requires_grad_() for h in (Hq, Hk, Hk))
    do = torch.randn(B, T, Hq, Dh, generator=g).to("cuda", torch.bfloat16)

    if provider == "triton":

        def forward():
            return A.sliding_window_attention(q, k, v, window)[0]

        def fwd_bwd():
            o, lse = A.sliding_window_attention(q, k, v, window)
            return A.sliding_window_attention_backward(do, q, k, v, o, lse, window)[:3]

    else:
        if provider == "flash-attn":

            def forward():
                return flash(q, k, v, causal=True, window_size=(window - 1, 0))

        else:
            mask = None if window >= T else dense_mask(T, T, window, 0).cuda()

            def forward():
                qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))
                o = F.scaled_dot_product_attention(qt, kt, vt, attn_mask=mask, is_causal=mask is None, enable_gqa=True)
                return o.transpose(1, 2)

        def fwd_bwd():
            return torch.autograd.grad(forward(), (q, k, v), do)

    # equivalence: the first 512 query rows see only the first 512 keys, a cheap fp64 reference
    n = 512
    want = ref.sliding_window_attention(*(x[:1, :n].detach().double() for x in (q, k, v)), window)
    got = forward()[:1, :n].double()
    assert F.cosine_similarity(got.flatten(), want.flatten(), dim=0) > 0.9999
    torch.cuda.synchronize()

    def timed():
        fwd_bwd()
        torch.cuda.synchronize()

    bench(timed, rounds=10, warmup_rounds=2)
    flops = 7 * 2 * Dh * B * Hq * visible_pairs(T, T, window, 0)
    bench.info(provider=provider, shape=f"B={B} T={T} W={window} H={Hq} Hkv={Hk} D={Dh} bf16", T=T)
    if bench.median_s is not None:
        tflops = flops / bench.median_s / 1e12
        bench.extra_info["tflop_per_s"] = round(tflops, 1)
        bench.row(bench="swa_cuda", provider=provider, T=T, W=window, ms=round(1e3 * bench.median_s, 2), tflops=tflops)
