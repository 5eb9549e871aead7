"""Gated linear units: act(gate) * up (SwiGLU, GeGLU) and the fused projection + GLU, against what users write.

Every bench first checks equivalence on a slice of its own output (the op is elementwise per row, so the first rows
or columns stand for the rest) against an fp64 oracle, by the project rule: the provider's max error is at most 2x
the error of the same expression computed by plain PyTorch in the input dtype (plus one ulp of the largest value),
then times. Throughput is effective bandwidth: the bytes an ideal fused kernel moves over the median time (forward:
read gate and up, write out, 3 values per element; backward: read grad, gate, up, write dgate, dup, 5 more).

- `test_glu_cpu`: `fastllm.kernels.glu` (provider "reference": the eager fp32 path fastllm runs on the CPU) against
  "torch", the plain `F.silu(gate) * up` (or `F.gelu`, tanh-GELU), and "torch-compile", that expression compiled by
  inductor's C++ backend (compiled outside the timed region). Forward and forward + backward, tokens x d_ff of
  4096 x 11008 (prefill, fp32 and bf16), 8 x 11008 (decode) and 1024 x 11008 for the GELU variants.
- `test_glu_linear_cpu`: `fastllm.kernels.glu_linear(x, w_gate_up)` (one packed projection, then the GLU) against
  the two plain matmuls + GLU, Llama-3.2-1B MLP dims (K=2048, I=8192), decode (M=8) and a prefill chunk (M=128).
  GB/s counts x, the weights and the output; gflop_per_s the 2 * M * K * 2I of the projection.
- `test_glu_interpreter`, `test_glu_linear_interpreter`: the Triton kernels run once by Triton's interpreter at odd
  shapes (37 x 301), an equivalence check of the kernels themselves on a machine without a GPU (provider
  "triton-interpreter"; the time is the interpreter's and says nothing about the kernel). Needs TRITON_INTERPRET=1,
  which benches/conftest.py sets without CUDA.
- `test_glu_cuda`, `test_glu_linear_cuda`: provider "triton" against "torch", "torch-compile" and "liger"
  (Liger-Kernel's SiLU / tanh-GELU mul, when installed), with GB/s and its fraction of the device's DRAM bandwidth
  (memory clock x bus width). Skipped without CUDA. 8 x 11008 fits in L2, so its GB/s can exceed DRAM's.

Run with `pytest benches/bench_glu.py --benchmark`.
"""

import functools
import os

import pytest
import torch
import torch.nn.functional as F

import fastllm.kernels as K

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
CHECK_ROWS = 64  # rows (glu) or output columns (glu_linear) compared against the fp64 oracle
_MEDIANS: dict[tuple, dict[str, float]] = {}  # case -> provider -> median seconds, for speedup_vs_torch


# ---- the plain expressions users write ---------------------------------------------------------------------------


def swiglu(gate, up):
    return F.silu(gate) * up


def geglu(gate, up):
    return F.gelu(gate) * up


def geglu_tanh(gate, up):
    return F.gelu(gate, approximate="tanh") * up


PLAIN = {"silu": swiglu, "gelu": geglu, "gelu_tanh": geglu_tanh}


def compiled(fn):
    """`torch.compile` of a plain expression with static shapes, from a clean dynamo cache (each bench compiles
    for its own shape, so that no recompile limit or automatic dynamic shape changes what is timed)."""
    torch._dynamo.reset()
    return torch.compile(fn, dynamic=False)


# ---- equivalence ---------------------------------------------------------------------------------------------------


def assert_err_at_most_2x_torch(got, oracle, torch_same_dtype, what: str) -> None:
    """max |got - oracle| <= 2 max |torch - oracle| + one ulp (of got's dtype) of the largest oracle value."""
    err = (got.double() - oracle).abs().max().item()
    base = (torch_same_dtype.double() - oracle).abs().max().item()
    ulp = torch.finfo(got.dtype).eps * oracle.abs().max().item()
    assert err <= 2 * base + ulp, f"{what}: max error {err:.3g} vs fp64 exceeds 2x torch's {base:.3g} (+ {ulp:.2g})"


def run_glu(fn, mode: str, gate, up, grad) -> tuple:
    """(out,) for mode "fwd" (no autograd), (out, dgate, dup) for "fwd_bwd"; gate and up are leaves for the latter."""
    if mode == "fwd":
        with torch.no_grad():
            return (fn(gate, up),)
    out = fn(gate, up)
    return (out, *torch.autograd.grad(out, (gate, up), grad))


def check_glu(got: tuple, mode: str, gate, up, grad, activation: str) -> None:
    """The first CHECK_ROWS rows of a provider's outputs against fp64, by the 2x-torch rule."""
    rows = [t[:CHECK_ROWS].detach() for t in (gate, up, grad)]

    def plain(dtype):  # the plain expression on those rows in `dtype`
        leaves = [t.to(dtype).requires_grad_(mode != "fwd") for t in rows[:2]]
        return run_glu(PLAIN[activation], mode, *leaves, rows[2].to(dtype))

    want, base = plain(torch.float64), plain(gate.dtype)
    for name, g, w, b in zip(("out", "dgate", "dup"), got, want, base):
        assert_err_at_most_2x_torch(g[:CHECK_ROWS].detach(), w.detach(), b.detach(), f"glu {activation} {name}")


def checked_bench(bench, check, fn, *args, **timing):
    """Equivalence first, then the timing: with --benchmark a checked call (which also warms up and compiles) before
    the timed rounds; without it the bench's single call is the one checked, so each case runs once."""
    if bench.timing:
        check(fn(*args))
        return bench(fn, *args, **timing)
    result = bench(fn, *args, **timing)
    check(result)
    return result


def glu_bytes(n: int, element_size: int, mode: str) -> int:
    """Bytes a fused kernel moves: forward reads gate, up and writes out; backward reads 3 and writes 2 more."""
    return (3 if mode == "fwd" else 8) * n * element_size


@functools.lru_cache(maxsize=1)
def glu_inputs(rows: int, cols: int, dtype: str, device: str) -> tuple:
    """(gate, up, grad) (rows, cols) ~ N(0, 1); cached for the providers and modes of one case."""
    g = torch.Generator(device).manual_seed(rows * 100003 + cols)
    return tuple(torch.randn(rows, cols, generator=g, device=device, dtype=DTYPES[dtype]) for _ in range(3))


def record(fixture, key: tuple, provider: str, nbytes: int, flops: int | None = None, **row) -> None:
    """GB/s (and GFLOP/s) from the median into extra_info and a summary row, with the speedup over "torch" (which
    runs first in each case)."""
    t = fixture.median_s
    medians = _MEDIANS.setdefault(key, {})
    medians[provider] = t
    metrics = dict(gb_per_s=round(nbytes / t / 1e9, 2))
    if flops is not None:
        metrics["gflop_per_s"] = round(flops / t / 1e9, 1)
    if provider != "torch" and "torch" in medians:
        metrics["speedup_vs_torch"] = round(medians["torch"] / t, 2)
    fixture.extra_info.update(metrics)
    fixture.row(**row, provider=provider, ms=round(1e3 * t, 3), **metrics)


# ---- CPU -----------------------------------------------------------------------------------------------------------

CPU_CASES = [  # tokens, d_ff, dtype, activation
    pytest.param(4096, 11008, "float32", "silu", id="4096x11008-fp32-silu"),
    pytest.param(4096, 11008, "bfloat16", "silu", id="4096x11008-bf16-silu"),
    pytest.param(8, 11008, "float32", "silu", id="8x11008-fp32-silu"),
    pytest.param(8, 11008, "bfloat16", "silu", id="8x11008-bf16-silu"),
    pytest.param(1024, 11008, "bfloat16", "gelu", id="1024x11008-bf16-gelu"),
    pytest.param(1024, 11008, "bfloat16", "gelu_tanh", id="1024x11008-bf16-gelu_tanh"),
]


def cpu_rounds(n: int, mode: str) -> dict:
    """Few rounds for the 45M-element prefill (0.1-3 s a call on 2 cores; the checked call before them warms up),
    many short ones for decode sizes."""
    if n >= 1 << 24:
        return dict(rounds=3 if mode == "fwd" else 2, warmup_rounds=0)
    if n >= 1 << 20:
        return dict(rounds=5, warmup_rounds=0)
    return dict(rounds=15, warmup_rounds=1, iterations=10)


@pytest.mark.parametrize("provider", ["torch", "torch-compile", "reference"])
@pytest.mark.parametrize("mode", ["fwd", "fwd_bwd"])
@pytest.mark.parametrize("T,d_ff,dtype,activation", CPU_CASES)
def test_glu_cpu(bench, T, d_ff, dtype, activation, mode, provider):
    assert K.backend_for("glu", torch.device("cpu")) == "reference"  # what fastllm runs on a CPU
    gate, up, grad = glu_inputs(T, d_ff, dtype, "cpu")
    if mode == "fwd_bwd":
        gate, up = gate.detach().requires_grad_(), up.detach().requires_grad_()
    if provider == "reference":
        fn = functools.partial(K.glu, activation=activation)
    else:
        fn = PLAIN[activation] if provider == "torch" else compiled(PLAIN[activation])

    def check(got):
        check_glu(got, mode, gate, up, grad, activation)

    checked_bench(bench, check, run_glu, fn, mode, gate, up, grad, **cpu_rounds(T * d_ff, mode))
    shape = f"T={T} I={d_ff}"
    bench.info(provider=provider, shape=shape, dtype=dtype, device="cpu", activation=activation, mode=mode)
    bench.extra_info.update(threads=torch.get_num_threads())
    if bench.median_s is not None:
        nbytes = glu_bytes(T * d_ff, gate.element_size(), mode)
        key = ("glu_cpu", T, d_ff, dtype, activation, mode)
        record(bench, key, provider, nbytes, bench="glu_cpu", shape=shape, dtype=dtype, act=activation, mode=mode)


LINEAR_DIMS = dict(K=2048, d_ff=8192)  # Llama-3.2-1B MLP: hidden 2048, intermediate 8192


@functools.lru_cache(maxsize=1)
def linear_inputs(M: int, dtype: str, device: str) -> tuple:
    """x (M, K) ~ N(0, 1) and the packed weight (2I, K) ~ N(0, 1 / K), so that projections are ~ N(0, 1)."""
    g = torch.Generator(device).manual_seed(M)
    Kd, d_ff = LINEAR_DIMS["K"], LINEAR_DIMS["d_ff"]
    x = torch.randn(M, Kd, generator=g, device=device).to(DTYPES[dtype])
    w = (torch.randn(2 * d_ff, Kd, generator=g, device=device) * Kd**-0.5).to(DTYPES[dtype])
    return x, w


def two_matmuls_glu(x, w_gate, w_up, activation="silu"):
    """The unfused MLP input: two nn.Linear projections, then the GLU."""
    return PLAIN[activation](F.linear(x, w_gate), F.linear(x, w_up))


def check_glu_linear(got, x, w) -> None:
    """The first CHECK_ROWS output columns against fp64, by the 2x-torch rule."""
    d_ff = w.shape[0] // 2
    wg, wu = w[:CHECK_ROWS], w[d_ff : d_ff + CHECK_ROWS]  # the weight rows of those columns
    want = two_matmuls_glu(x.double(), wg.double(), wu.double())
    assert_err_at_most_2x_torch(got[:, :CHECK_ROWS], want, two_matmuls_glu(x, wg, wu), "glu_linear")


def linear_work(M: int, Kd: int, d_ff: int, element_size: int) -> tuple[int, int]:
    """(bytes of x (M, K), the packed weights (2I, K) and the output (M, I), flops of the projection)."""
    return (M * Kd + 2 * d_ff * Kd + M * d_ff) * element_size, 2 * M * Kd * 2 * d_ff


@pytest.mark.parametrize("provider", ["torch", "reference"])
@pytest.mark.parametrize("M,dtype", [(8, "float32"), (8, "bfloat16"), (128, "float32"), (128, "bfloat16")])
def test_glu_linear_cpu(bench, M, dtype, provider):
    assert K.backend_for("glu_linear", torch.device("cpu")) == "reference"
    x, w = linear_inputs(M, dtype, "cpu")
    d_ff = w.shape[0] // 2
    if provider == "reference":
        fn, args = K.glu_linear, (x, w)
    else:
        fn, args = two_matmuls_glu, (x, w[:d_ff], w[d_ff:])  # row blocks of a contiguous weight: contiguous
    with torch.no_grad():
        checked_bench(bench, lambda got: check_glu_linear(got, x, w), fn, *args, rounds=5, warmup_rounds=0)
    shape = f"M={M} K={LINEAR_DIMS['K']} I={d_ff}"
    bench.info(provider=provider, shape=shape, dtype=dtype, device="cpu", activation="silu")
    bench.extra_info.update(threads=torch.get_num_threads())
    if bench.median_s is not None:
        nbytes, flops = linear_work(M, LINEAR_DIMS["K"], d_ff, x.element_size())
        record(
            bench,
            ("glu_linear_cpu", M, dtype),
            provider,
            nbytes,
            flops,
            bench="glu_linear_cpu",
            shape=shape,
            dtype=dtype,
        )


# ---- Triton's interpreter (no GPU) ----------------------------------------------------------------------------------


def interpreter_only():
    if torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("the interpreter check is for machines without a GPU (TRITON_INTERPRET=1)")


INTERPRETER_CASES = [(act, dt) for act in ("silu", "gelu", "gelu_tanh") for dt in ("float32", "bfloat16")]


@pytest.mark.parametrize("activation,dtype", INTERPRETER_CASES)
def test_glu_interpreter(bench, activation, dtype):
    interpreter_only()
    from fastllm.kernels.triton import glu as tglu

    gate, up, grad = glu_inputs(37, 301, dtype, "cpu")

    def fwd_bwd():
        return (tglu.glu(gate, up, activation), *tglu.glu_backward(grad, gate, up, activation))

    got = bench(fwd_bwd, rounds=1, warmup_rounds=0)  # runs once either way: an equivalence check, not a timing
    bench.info(provider="triton-interpreter", shape="T=37 I=301", dtype=dtype, device="cpu", activation=activation)
    check_glu(got, "fwd_bwd", gate, up, grad, activation)
    bench.row(
        bench="glu_interpreter",
        provider="triton-interpreter",
        shape="37x301",
        dtype=dtype,
        act=activation,
        checked="fwd+bwd vs fp64",
    )


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_glu_linear_interpreter(bench, dtype):
    interpreter_only()
    from fastllm.kernels.triton import glu as tglu

    g = torch.Generator().manual_seed(37)
    x = torch.randn(37, 96, generator=g).to(DTYPES[dtype])
    w = (torch.randn(2 * 301, 96, generator=g) * 96**-0.5).to(DTYPES[dtype])
    got = bench(tglu.glu_linear, x, w, "silu", rounds=1, warmup_rounds=0)
    bench.info(provider="triton-interpreter", shape="M=37 K=96 I=301", dtype=dtype, device="cpu", activation="silu")
    check_glu_linear(got, x, w)
    bench.row(
        bench="glu_linear_interpreter",
        provider="triton-interpreter",
        shape="37x96->301",
        dtype=dtype,
        act="silu",
        checked="fwd vs fp64",
    )


# ---- CUDA ----------------------------------------------------------------------------------------------------------


def dram_bytes_per_s(device: int = 0) -> float | None:
    """Theoretical DRAM bandwidth: 2 transfers per clock x bus bytes x memory clock (kHz); None if not reported."""
    props = torch.cuda.get_device_properties(device)
    bus, clock_khz = getattr(props, "memory_bus_width", 0), getattr(props, "memory_clock_rate", 0)
    return 2 * bus / 8 * clock_khz * 1e3 if bus and clock_khz else None


def liger_or_skip(activation: str):
    """Liger-Kernel's fused mul for `activation` (an autograd Function's apply), or a skip with the reason."""
    if activation == "gelu":
        pytest.skip("Liger-Kernel has no erf-GELU mul (its GEGLU uses the tanh approximation)")
    try:
        if activation == "silu":
            from liger_kernel.ops.swiglu import LigerSiLUMulFunction as Fn
        else:
            from liger_kernel.ops.geglu import LigerGELUMulFunction as Fn
    except ImportError:
        pytest.skip("peer liger-kernel is not installed")
    return Fn.apply


CUDA_CASES = [  # tokens, d_ff, dtype, activation
    pytest.param(8, 11008, "bfloat16", "silu", id="8x11008-bf16-silu"),
    pytest.param(4096, 11008, "bfloat16", "silu", id="4096x11008-bf16-silu"),
    pytest.param(4096, 11008, "float32", "silu", id="4096x11008-fp32-silu"),
    pytest.param(16384, 14336, "bfloat16", "silu", id="16384x14336-bf16-silu"),
    pytest.param(4096, 11008, "bfloat16", "gelu_tanh", id="4096x11008-bf16-gelu_tanh"),
]


@pytest.mark.parametrize("provider", ["torch", "torch-compile", "liger", "triton"])
@pytest.mark.parametrize("mode", ["fwd", "fwd_bwd"])
@pytest.mark.parametrize("T,d_ff,dtype,activation", CUDA_CASES)
def test_glu_cuda(bench, T, d_ff, dtype, activation, mode, provider):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device (the kernel's GB/s); on the CPU see test_glu_interpreter")
    if provider == "triton":
        assert K.backend_for("glu", torch.device("cuda")) == "triton"
        fn = functools.partial(K.glu, activation=activation)
    elif provider == "liger":
        fn = liger_or_skip(activation)
    else:
        fn = PLAIN[activation] if provider == "torch" else compiled(PLAIN[activation])
    gate, up, grad = glu_inputs(T, d_ff, dtype, "cuda")

    def leaves():  # copies of the inputs: Liger's backward writes dgate and dup over its saved gate and up
        return [t.clone().requires_grad_(mode == "fwd_bwd") for t in (gate, up)]

    check_glu(run_glu(fn, mode, *leaves(), grad), mode, gate, up, grad, activation)  # also compiles, untimed
    work = leaves()  # what the timed calls read (Liger overwrites them, as it overwrites an MLP's projections)
    torch.cuda.synchronize()

    reps = 20  # back-to-back calls, so that launch overhead does not dominate the small shapes

    def steps():
        for _ in range(reps):
            run_glu(fn, mode, *work, grad)
        torch.cuda.synchronize()

    bench(steps, rounds=10, warmup_rounds=2)
    shape = f"T={T} I={d_ff}"
    peer = "liger-kernel" if provider == "liger" else None
    bench.info(peer, provider=provider, shape=shape, dtype=dtype, device="cuda", activation=activation, mode=mode)
    if bench.median_s is None:
        return
    step_s = bench.median_s / reps
    gbps = glu_bytes(T * d_ff, gate.element_size(), mode) / step_s / 1e9
    peak = dram_bytes_per_s()
    fraction = round(gbps * 1e9 / peak, 3) if peak else None
    bench.extra_info.update(gb_per_s=round(gbps, 1), dram_bw_ratio=fraction)
    bench.row(
        bench="glu_cuda",
        provider=provider,
        shape=shape,
        dtype=dtype,
        act=activation,
        mode=mode,
        us=round(1e6 * step_s, 2),
        gb_per_s=round(gbps, 1),
        dram_bw_ratio=fraction,
    )


@pytest.mark.parametrize("provider", ["torch", "triton"])
@pytest.mark.parametrize("M", [1, 16, 4096])
def test_glu_linear_cuda(bench, M, provider):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device; on the CPU see test_glu_linear_interpreter")
    Kd, d_ff = 4096, 14336  # Llama-3-8B MLP
    g = torch.Generator("cuda").manual_seed(M)
    x = torch.randn(M, Kd, generator=g, device="cuda", dtype=torch.bfloat16)
    w = (torch.randn(2 * d_ff, Kd, generator=g, device="cuda") * Kd**-0.5).to(torch.bfloat16)
    if provider == "triton":
        assert K.backend_for("glu_linear", torch.device("cuda")) == "triton"
        fn, args = K.glu_linear, (x, w)
    else:
        fn, args = two_matmuls_glu, (x, w[:d_ff], w[d_ff:])
    with torch.no_grad():
        check_glu_linear(fn(*args), x, w)
        reps = 10

        def steps():
            for _ in range(reps):
                fn(*args)
            torch.cuda.synchronize()

        bench(steps, rounds=10, warmup_rounds=2)
    shape = f"M={M} K={Kd} I={d_ff}"
    bench.info(provider=provider, shape=shape, dtype="bfloat16", device="cuda", activation="silu")
    if bench.median_s is None:
        return
    step_s = bench.median_s / reps
    nbytes, flops = linear_work(M, Kd, d_ff, x.element_size())
    gbps, tflops = nbytes / step_s / 1e9, flops / step_s / 1e12
    peak = dram_bytes_per_s()
    fraction = round(gbps * 1e9 / peak, 3) if peak else None
    bench.extra_info.update(gb_per_s=round(gbps, 1), tflop_per_s=round(tflops, 1), dram_bw_ratio=fraction)
    bench.row(
        bench="glu_linear_cuda",
        provider=provider,
        shape=shape,
        us=round(1e6 * step_s, 2),
        gb_per_s=round(gbps, 1),
        tflops=round(tflops, 1),
        dram_bw_ratio=fraction,
    )
