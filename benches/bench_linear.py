"""Decode-sized linear layers on the CPU: fastllm's C++ kernels against torch, per layer shape.

A decode step's linear layers multiply a few activation rows (M = batch) by weights read once per token: the time is
the time to stream the weight bytes. Each case first checks the provider's output against fp64 on the weight it
computes with (fp32: tight; bf16: at most 2x torch's bf16 error; int8: the dequantized weight), then times it.
GB/s counts the weight bytes per call; `bound_fraction` is that over the read bandwidth measured in this session
(`memory_bandwidth` of bench_generate, all threads). Weights are 16-128 MB per case set, mostly past the caches.

Providers: "torch" (F.linear with fp32 or bf16 weights: MKL / oneDNN), "fastllm" (`torch.ops.fastllm.linear`,
the C++ GEMV the model layer uses for M <= 8), "fastllm-packed" (`fastllm::linear_packed`: the same kernel on the
weight packed in 8-row tiles by `fastllm.kernels.pack_weight`), "fastllm-vnni2" (bf16 only: the weight packed
`layout="vnni2"`, 16 rows x 2 columns per vector, vdpbf16ps on AVX512-BF16 CPUs: what the compiled bf16 decode step
runs there),
"fastllm-int8" (`fastllm.kernels.int8_linear`, packed int8 weight-only, per-row scales), "fastllm-w8a8" (the same
codes in the VNNI layout, activations quantized per row: integer dot products on AVX-512 VNNI, what
`quantize(model, "w8a8")` runs; checked to the bit against its reference, `int8_linear_w8a8`), "torch-int8"
(`torch._weight_int8pack_mm`, the CPU int8 weight-only kernel torchao's int8_weight_only uses). Shapes: GPT-2
124M's four layer matmuls and its LM head, Llama-3.2-1B's MLP up projection.

Run with `pytest benches/bench_linear.py --benchmark`.
"""

import functools

import pytest
import torch
import torch.nn.functional as F

import fastllm.kernels as K
from fastllm.kernels import cpu
from fastllm.kernels.reference.linear import int8_linear_w8a8

SHAPES = {  # name: (N, K)
    "gpt2-qkv": (2304, 768),
    "gpt2-fc": (3072, 768),
    "gpt2-proj": (768, 3072),
    "gpt2-lm_head": (50257, 768),
    "llama1b-up": (8192, 2048),
}
PROVIDERS = ["torch", "fastllm", "fastllm-packed", "fastllm-vnni2", "fastllm-int8", "fastllm-w8a8", "torch-int8"]
_MEDIANS: dict[tuple, dict[str, float]] = {}


@functools.lru_cache(maxsize=1)
def bandwidth() -> float:
    from bench_generate import memory_bandwidth

    return memory_bandwidth()


@functools.lru_cache(maxsize=2)
def weights(N: int, Kd: int) -> dict:
    """The float weight (N, K) ~ N(0, 1/K), its int8 codes and scales, packed, and torch's int8 form."""
    w = torch.randn(N, Kd, generator=torch.Generator().manual_seed(N + Kd)) * Kd**-0.5
    codes, scale = K.quantize_int8(w)
    return dict(w=w, codes=codes, scale=scale, packed=K.pack_int8(codes), vnni=K.pack_int8(codes, layout="vnni"))


def provider_call(provider: str, N: int, Kd: int, dtype: torch.dtype):
    """(fn(x) -> y, the fp64 weight it computes with, weight bytes per call)."""
    ws = weights(N, Kd)
    if provider in ("torch", "fastllm"):
        w = ws["w"].to(dtype)
        op = F.linear if provider == "torch" else torch.ops.fastllm.linear
        return (lambda x: op(x, w, None)), w.double(), w.numel() * w.element_size()
    if provider in ("fastllm-packed", "fastllm-vnni2"):
        if provider == "fastllm-vnni2" and dtype != torch.bfloat16:
            pytest.skip("the vnni2 layout is for bf16 weights (fp32 ones take the reference)")
        w = ws["w"].to(dtype)
        packed = K.pack_weight(w, layout="tiles" if provider == "fastllm-packed" else "vnni2")
        return (lambda x: torch.ops.fastllm.linear_packed(x, packed, None, N)), w.double(), w.numel() * w.element_size()
    w64 = ws["codes"].double() * ws["scale"].double()[:, None]
    if provider in ("fastllm-int8", "fastllm-w8a8"):
        act = "int8" if provider == "fastllm-w8a8" else "float"
        packed, scale = ws["vnni" if act == "int8" else "packed"], ws["scale"]
        return (lambda x: K.int8_linear(x, packed, scale, activations=act)), w64, packed.numel() + 4 * N
    if not hasattr(torch, "_weight_int8pack_mm"):
        pytest.skip("this torch has no _weight_int8pack_mm")
    codes, scale = ws["codes"], ws["scale"].to(dtype)  # its scales are in x's dtype: the weight it computes with
    w_peer = codes.double() * scale.double()[:, None]
    return (
        (lambda x: torch._weight_int8pack_mm(x, codes, scale)),
        w_peer,
        codes.numel() + scale.numel() * scale.element_size(),
    )


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("M", [1, 8])
@pytest.mark.parametrize("shape", list(SHAPES))
def test_linear_cpu(bench, shape, M, dtype, provider, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)  # the dispatch users get on a CPU
    monkeypatch.delenv("FASTLLM_KERNELS", raising=False)
    N, Kd = SHAPES[shape]
    dt = getattr(torch, dtype)
    fn, w64, nbytes = provider_call(provider, N, Kd, dt)
    x = torch.randn(M, Kd, generator=torch.Generator().manual_seed(M)).to(dt)
    if provider == "fastllm":
        assert cpu.supports(x, w64.to(dt)), "the model layer sends this call to the C++ kernel"

    with torch.no_grad():
        got = fn(x).double()
        want = x.double() @ w64.T
        err = (got - want).abs().max().item()
        if provider == "fastllm-w8a8":  # its oracle is the W8A8 reference (activations rounded): equal to the bit
            ws = weights(N, Kd)
            assert torch.equal(got, int8_linear_w8a8(x, ws["packed"], ws["scale"], None).double())
        elif dt == torch.float32:
            assert err <= 1e-4 * want.abs().max().item(), f"{provider}: max error {err:.3g}"
        else:  # bf16 activations and output: at most 2x torch's bf16 error on the same weight
            base = (F.linear(x, w64.to(dt)).double() - want).abs().max().item()
            assert err <= 2 * base + 1e-3 * want.abs().max().item(), f"{provider}: {err:.3g} vs torch {base:.3g}"
        bench(fn, x, rounds=20, warmup_rounds=2, iterations=5 if N * Kd < 4e6 else 1)

    bench.info(provider=provider, shape=f"{shape} N={N} K={Kd} M={M}", dtype=dtype, device="cpu", isa=cpu.isa())
    if bench.median_s is None:
        return
    t = bench.median_s
    medians = _MEDIANS.setdefault((shape, M, dtype), {})
    medians[provider] = t
    info = dict(
        us=round(1e6 * t, 1), gb_per_s=round(nbytes / t / 1e9, 1), bound_fraction=round(nbytes / t / bandwidth(), 2)
    )
    if provider != "torch" and "torch" in medians:
        info["speedup_vs_torch"] = round(medians["torch"] / t, 2)
    bench.extra_info.update(info)
    bench.row(bench="linear_cpu", shape=shape, M=M, dtype=dtype, provider=provider, **info)
