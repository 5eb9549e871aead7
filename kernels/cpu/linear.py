"""Launchers of the C++ small-M linear kernels (csrc/cpu/linear.h): validation, then raw pointers to `fastllm._cpu`.

The kernels stream each weight tile once for all M activation rows (decode: M = batch), widen the weights to fp32
in registers (fp32 and bf16 weights in nn.Linear's (N, K) layout; int8 codes times a per-row scale in the packed
layout of `fastllm.kernels.reference.linear`) and split the rows over a pool of threads. They exist for the
memory-bound decode step; with more rows torch's GEMM is faster (MAX_M, MAX_M_PACKED). Everything the C++ side reads
is checked here first: it trusts the pointers and sizes it is given.
"""

import contextlib

import torch

from fastllm import _cpu
from fastllm.kernels.reference.linear import PACK_COLS, PACK_ROWS, VNNI2_COLS, VNNI_COLS, VNNI_ROWS, packed_shape

DTYPE_CODES = {torch.float32: 0, torch.bfloat16: 1, torch.int8: 2, torch.uint8: 3}  # uint8: the "vnni" layout
X_DTYPES = (torch.float32, torch.bfloat16)
# Most activation rows the model layer sends to each kernel; with more, torch's GEMM (on the dequantized weight for
# int8) wins on the CPUs measured (benches/bench_linear.py).
MAX_M = 8
MAX_M_PACKED = 16
_LAYOUTS = (PACK_ROWS, PACK_COLS, VNNI_ROWS, VNNI_COLS, VNNI2_COLS)
assert (_cpu.PACK_ROWS, _cpu.PACK_COLS, _cpu.VNNI_ROWS, _cpu.VNNI_COLS, _cpu.VNNI2_COLS) == _LAYOUTS, "linear.h"


_threads: int | None = None  # the kernel's thread count inside `decode_threads`; None: torch's


def threads() -> int:
    """Threads a kernel call runs on: torch's intra-op count, or the count `decode_threads` set aside."""
    return _threads or torch.get_num_threads()


@contextlib.contextmanager
def decode_threads():
    """Runs the block with torch's intra-op pool at one thread and fastllm's CPU kernels on the threads torch had.

    An int8 decode step is a chain of small torch ops around the kernel calls. torch's OpenMP workers spin for a
    while after every op and take the cores the kernel's workers need: GPT-2 124M int8 at batch 1 ran at 30 ms
    per token with both pools live, 13 ms with torch's workers passive (OMP_WAIT_POLICY=passive). At decode sizes
    the torch ops lose little on one thread, so the engine runs int8 decode steps inside this block.
    """
    global _threads
    outer, torch_threads = _threads, torch.get_num_threads()
    _threads = outer or torch_threads
    torch.set_num_threads(1)
    _cpu.set_threads(_threads)  # the same count for the C++ torch operators (kernels/cpu/native.py)
    try:
        yield
    finally:
        torch.set_num_threads(torch_threads)
        _threads = outer
        _cpu.set_threads(outer or 0)


def isa() -> str:
    """The instruction set the kernel uses on this CPU: 'avx512bf16' (AVX-512, bf16 x bf16 on vdpbf16ps), 'avx512',
    'avx2' or 'generic'."""
    return _cpu.isa()


def supports(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether `linear(x, weight, bias)` is the fast path: CPU tensors, fp32 or bf16, one dtype, <= MAX_M rows."""
    return (
        x.is_cpu
        and weight.is_cpu
        and x.dtype == weight.dtype
        and x.dtype in X_DTYPES
        and x.numel() <= MAX_M * x.shape[-1]
    )


def _fail(msg: str):
    raise ValueError(f"fastllm.kernels.cpu: {msg}")


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """x (..., K) @ weight (N, K)^T + bias -> (..., N), fp32 or bf16 (one dtype for all), accumulated in fp32."""
    code = _x_code(x)
    if weight.dtype != x.dtype or weight.dim() != 2 or not weight.is_cpu or weight.shape[1] != x.shape[-1]:
        _fail(f"weight must be (N, K={x.shape[-1]}) {x.dtype} on the CPU, got {tuple(weight.shape)} {weight.dtype} "
              f"on {weight.device}")  # fmt: skip
    if weight.stride(1) != 1 or weight.stride(0) < weight.shape[1]:
        weight = weight.contiguous()
    return _run(x, code, weight, code, False, weight.stride(0), None, bias, weight.shape[0])


def grouped_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """x (..., G, K) and G weights (G, N, K) -> (..., G, N): y[..., g, :] = x[..., g, :] @ weight[g]^T + bias[g], fp32
    or bf16 (one dtype for all), accumulated in fp32: independent linears side by side (MLA's per-head up
    projections), each group on one thread, the groups over the pool. weight may be a strided view (groups and rows
    apart, columns contiguous); bias (G, N) or None. Any number of rows (meant for few: decode)."""
    code = _x_code(x)
    if x.dim() < 2:
        _fail(f"x must be (..., G, K), got {tuple(x.shape)}")
    G, K = x.shape[-2], x.shape[-1]
    fits = weight.dim() == 3 and weight.shape[0] == G and weight.shape[2] == K
    if weight.dtype != x.dtype or not fits or not weight.is_cpu:
        _fail(f"weight must be (G={G}, N, K={K}) {x.dtype} on the CPU, got {tuple(weight.shape)} {weight.dtype} "
              f"on {weight.device}")  # fmt: skip
    N = weight.shape[1]
    if weight.stride(2) != 1 or weight.stride(1) < K or weight.stride(0) < N * weight.stride(1):
        weight = weight.contiguous()
    if bias is not None:
        if bias.dtype != x.dtype or bias.shape != (G, N) or not bias.is_cpu:
            got = f"{tuple(bias.shape)} {bias.dtype} on {bias.device}"
            _fail(f"bias must be ({G}, {N}) {x.dtype} on the CPU, got {got}")
        bias = bias.contiguous()
    x2 = x.reshape(-1, G * K).contiguous()  # (M, G K)
    M = x2.shape[0]
    y = torch.empty(M, G * N, dtype=x.dtype)  # (M, G N)
    if M and N and K:
        _cpu.linear(
            x2.data_ptr(), code, M, K, G * K, weight.data_ptr(), code, False, N, weight.stride(1), 0,
            0 if bias is None else bias.data_ptr(), y.data_ptr(), G * N, _threads or torch.get_num_threads(),
            groups=G, w_group_stride=weight.stride(0),
        )  # fmt: skip
    elif M and N:
        y.zero_()
        if bias is not None:
            y += bias.reshape(-1)
    return y.view(*x.shape[:-1], N)


def _x_code(x: torch.Tensor) -> int:
    """The C++ dtype code of activations x: fp32 or bf16 on the CPU."""
    code = DTYPE_CODES.get(x.dtype)
    if code is None or code == 2 or not x.is_cpu:
        _fail(f"x must be a float32 or bfloat16 CPU tensor, got {x.dtype} on {x.device}")
    return code


def _run(x, x_code, w, w_code, packed, ldw, scale, bias, N, quantize_x=False, vnni2=False):
    """The checks every launcher shares (x's dtype code is checked by the caller), then the C++ call."""
    K = x.shape[-1]
    if bias is not None:
        if bias.dtype != x.dtype or bias.shape != (N,) or not bias.is_cpu:
            _fail(f"bias must be ({N},) {x.dtype} on the CPU, got {tuple(bias.shape)} {bias.dtype} on {bias.device}")
        bias = bias.contiguous()
    flat = x.dim() == 2  # the usual decode call: (M, K), no reshapes (~1 us each, ~50 calls per token)
    x2 = x if flat and x.is_contiguous() else x.reshape(-1, K).contiguous()  # (M, K)
    M = x2.shape[0]
    y = torch.empty(M, N, dtype=x.dtype)  # (M, N)
    if M and N:
        _cpu.linear(
            x2.data_ptr(), x_code, M, K, K, w.data_ptr(), w_code, packed, N, ldw,
            0 if scale is None else scale.data_ptr(), 0 if bias is None else bias.data_ptr(),
            y.data_ptr(), N, _threads or torch.get_num_threads(), quantize_x, vnni2,
        )  # fmt: skip
    return y if flat else y.view(*x.shape[:-1], N)


# ---- packed int8 (layout: fastllm.kernels.reference.linear) ----------------------------------------------------


def linear_int8_packed(
    x: torch.Tensor, packed: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None, quantize_x: bool = False
) -> torch.Tensor:
    """x (..., K) fp32|bf16 @ (codes * scale[:, None])^T + bias -> (..., N) in x's dtype, codes packed by
    `pack_int8`, N = scale.shape[0]. Any number of rows (meant for few: decode). quantize_x: W8A8, x quantized
    per row to int8 (`fastllm.kernels.reference.linear.int8_linear_w8a8`, equal to the bit); the "vnni" layout
    (uint8) is for W8A8 only.

    A decode step calls this ~50 times per token, so the checks are written for speed (a few microseconds); they
    are complete all the same: the C++ side trusts every pointer and size it gets.
    """
    code = _x_code(x)
    if scale.dtype != torch.float32 or scale.dim() != 1 or not scale.is_cpu or not scale.is_contiguous():
        got = f"{tuple(scale.shape)} {scale.dtype} on {scale.device}"
        _fail(f"scale must be (N,) contiguous float32 on the CPU, got {got}")
    N, K = scale.shape[0], x.shape[-1]
    if packed.dtype == torch.uint8 and quantize_x:
        dtype, shape = torch.uint8, (-(-N // VNNI_ROWS), -(-K // VNNI_COLS), VNNI_ROWS, VNNI_COLS)
    else:
        dtype, shape = torch.int8, (-(-N // PACK_ROWS), -(-K // PACK_COLS), PACK_ROWS, PACK_COLS)
    if packed.dtype != dtype or packed.shape != shape or not packed.is_cpu:
        layouts = f"{packed_shape(N, K)} int8" + (f" or {packed_shape(N, K, 'vnni')} uint8" if quantize_x else "")
        _fail(f"packed weight for ({N}, {K}) must be {layouts} on the CPU, got {tuple(packed.shape)} "
              f"{packed.dtype} on {packed.device}")  # fmt: skip
    return _run(x, code, packed.contiguous(), DTYPE_CODES[packed.dtype], True, 0, scale, bias, N, quantize_x)


def linear_packed(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None, out_features: int) -> torch.Tensor:
    """x (..., K) @ weight^T + bias -> (..., N) for an fp32 or bf16 weight packed by `pack_weight` (x's dtype):
    the packed tiles stream as one run of memory each (row-major rows of a few KB side by side reached ~75% of
    the packed speed, measured on bf16). bf16 weights may be packed "vnni2" (vdpbf16ps on CPUs with AVX512-BF16,
    the layout told by the shape). Any number of rows (meant for few: decode)."""
    code = _x_code(x)
    N, K = out_features, x.shape[-1]
    shape = tuple(packed.shape)
    vnni2 = x.dtype == torch.bfloat16 and shape == packed_shape(N, K, "vnni2")
    if packed.dtype != x.dtype or not (vnni2 or shape == packed_shape(N, K)) or not packed.is_cpu:
        layouts = f"{packed_shape(N, K)}" + (f" or {packed_shape(N, K, 'vnni2')}" if x.dtype == torch.bfloat16 else "")
        _fail(f"packed weight for ({N}, {K}) must be {layouts} {x.dtype} on the CPU, got "
              f"{shape} {packed.dtype} on {packed.device}")  # fmt: skip
    return _run(x, code, packed.contiguous(), code, True, 0, None, bias, N, vnni2=vnni2)
