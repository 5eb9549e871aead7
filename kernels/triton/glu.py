"""Triton gated linear units: act(gate) * up forward and backward, packed or separate, and the fused projection.

Elementwise kernels (`glu`, `glu_packed`, `glu_backward`, `glu_packed_backward`) see their operands as
(rows, I) matrices with unit column stride and a row stride each, so a packed x (rows, 2I) is read in place: gate
and up are the two column halves of one buffer, offset by I (no split copy), and the packed backward writes both
halves of one fresh (rows, 2I) gradient. Every program owns a tile of 1024 elements, ROWS x BLOCK, and makes one
coalesced pass over it: load, compute in fp32, store in the output dtype. Grid: (row tiles, column blocks), row
tiles on grid axis 0 (up to 2^31 - 1). The backward recomputes act(gate) and act'(gate) from the inputs, so nothing
but the inputs is saved for it.

BLOCK rule: the smallest of 128, 512, 1024 columns that covers a row (1024 for wider rows, which take several
column blocks), and ROWS = 1024 / BLOCK rows (8, 2, 1), so that narrow rows still fill a program. 4 warps: each
thread moves 8 contiguous elements, one 16-byte access in bf16/fp16, two in fp32.

`glu_linear` is act(x @ Wg^T + bg) * (x @ Wu^T + bu) as one matmul: each program owns a BLOCK_M x BLOCK_N tile of
the (M, I) output, streams the matching BLOCK_N rows of both weight halves along K into two fp32 accumulators and
applies the GLU in the epilogue, so the (M, 2I) projection never reaches memory. Tiles (see `_linear_tiles`) are
chosen by M: decode-sized M streams the weights with a thin BLOCK_M, prefill-sized M uses a square-ish tile.
"""

import torch
import triton
import triton.language as tl

from fastllm.kernels._dispatch import interpret_mode, register_triton
from fastllm.kernels.reference.glu import ACTIVATIONS, split_packed
from fastllm.kernels.triton._aot import AOTConfig

_RSQRT_2 = tl.constexpr(0.7071067811865476)  # 1 / sqrt(2)
_RSQRT_2PI = tl.constexpr(0.3989422804014327)  # 1 / sqrt(2 pi)
_SQRT_2_OVER_PI = tl.constexpr(0.7978845608028654)
_GELU_TANH_C = tl.constexpr(0.044715)  # the cubic coefficient of the tanh approximation of GELU

_MAX_GRID_Y = 65535  # CUDA's limit on grid axis 1 (column blocks)
_TL_DTYPES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


# ---- activations (fp32 in, fp32 out) -----------------------------------------------------------------------------
# Constants sit to the right of tensors: in Triton's interpreter `constexpr * tensor` yields a constexpr-wrapped
# tensor that a nested @jit call cannot take.


@triton.jit
def _activation(x, ACTIVATION: tl.constexpr):
    if ACTIVATION == "silu":
        y = x * tl.sigmoid(x)
    elif ACTIVATION == "gelu":
        y = 0.5 * x * (1.0 + tl.math.erf(x * _RSQRT_2))
    else:  # gelu_tanh: 0.5 (1 + tanh(u)) = sigmoid(2u), without 1 + tanh's cancellation for u < 0
        y = x * tl.sigmoid((x + x * x * x * _GELU_TANH_C) * _SQRT_2_OVER_PI * 2.0)
    return y


@triton.jit
def _activation_and_grad(x, ACTIVATION: tl.constexpr):
    """(act(x), act'(x)); the formulas of `fastllm.kernels.reference.glu.activate_grad`."""
    if ACTIVATION == "silu":
        s = tl.sigmoid(x)
        y = x * s
        dy = s * (1.0 + x * (1.0 - s))
    elif ACTIVATION == "gelu":
        cdf = 0.5 * (1.0 + tl.math.erf(x * _RSQRT_2))
        y = x * cdf
        dy = cdf + x * tl.exp(-0.5 * x * x) * _RSQRT_2PI
    else:  # gelu_tanh, with s = sigmoid(2u) = 0.5 (1 + tanh(u)): 1 - tanh(u)^2 = 4 s (1 - s)
        z = (x + x * x * x * _GELU_TANH_C) * _SQRT_2_OVER_PI * 2.0
        s = tl.sigmoid(z)
        s_neg = tl.sigmoid(-z)  # 1 - s to full relative precision where s rounds to 1 (large x, large du)
        y = x * s
        du = (1.0 + x * x * _GELU_TANH_C * 3.0) * _SQRT_2_OVER_PI  # d/dx of the tanh argument
        dy = s + x * s * s_neg * du * 2.0
    return y, dy


# ---- elementwise GLU ---------------------------------------------------------------------------------------------


@triton.jit
def _tile(pid_rows, pid_cols, n_rows, n_cols, ROWS: tl.constexpr, BLOCK: tl.constexpr):
    """(row index (ROWS, 1) int64, column index (1, BLOCK), in-bounds mask) of one program's tile."""
    rows = pid_rows * ROWS + tl.arange(0, ROWS)
    cols = pid_cols * BLOCK + tl.arange(0, BLOCK)
    mask = (rows < n_rows)[:, None] & (cols < n_cols)[None, :]
    return rows.to(tl.int64)[:, None], cols[None, :], mask


@triton.jit
def _glu_fwd_kernel(
    gate_ptr,
    up_ptr,
    out_ptr,
    n_rows,
    n_cols,
    gate_stride,
    up_stride,
    out_stride,
    ACTIVATION: tl.constexpr,
    ROWS: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """out = act(gate) * up on the (ROWS, BLOCK) tile (program_id(0), program_id(1)) of (n_rows, n_cols)."""
    r, c, mask = _tile(tl.program_id(0), tl.program_id(1), n_rows, n_cols, ROWS, BLOCK)
    g = tl.load(gate_ptr + r * gate_stride + c, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(up_ptr + r * up_stride + c, mask=mask, other=0.0).to(tl.float32)
    out = _activation(g, ACTIVATION) * u
    tl.store(out_ptr + r * out_stride + c, out.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _glu_bwd_kernel(
    grad_ptr,
    gate_ptr,
    up_ptr,
    dgate_ptr,
    dup_ptr,
    n_rows,
    n_cols,
    grad_stride,
    gate_stride,
    up_stride,
    dgate_stride,
    dup_stride,
    ACTIVATION: tl.constexpr,
    ROWS: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """dgate = grad * up * act'(gate), dup = grad * act(gate), tiled like `_glu_fwd_kernel`."""
    r, c, mask = _tile(tl.program_id(0), tl.program_id(1), n_rows, n_cols, ROWS, BLOCK)
    go = tl.load(grad_ptr + r * grad_stride + c, mask=mask, other=0.0).to(tl.float32)
    g = tl.load(gate_ptr + r * gate_stride + c, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(up_ptr + r * up_stride + c, mask=mask, other=0.0).to(tl.float32)
    act, dact = _activation_and_grad(g, ACTIVATION)
    tl.store(dgate_ptr + r * dgate_stride + c, (go * u * dact).to(dgate_ptr.dtype.element_ty), mask=mask)
    tl.store(dup_ptr + r * dup_stride + c, (go * act).to(dup_ptr.dtype.element_ty), mask=mask)


_TILE = 1024  # elements per program: 4 warps x 32 threads x 8 contiguous elements
_NUM_WARPS = 4
_BLOCKS = (128, 512, 1024)  # columns per tile; a tile spans _TILE // BLOCK rows


def _block(n_cols: int) -> int:
    """The smallest of _BLOCKS that covers a row (1024 for wider rows, which take several column blocks)."""
    return next((b for b in _BLOCKS if n_cols <= b), _BLOCKS[-1])


def _as_rows(t: torch.Tensor, n_cols: int) -> torch.Tensor:
    """t (..., n_cols) as a (rows, n_cols) matrix with unit column stride: a view when one exists, else a copy."""
    t2 = t.reshape(-1, n_cols)
    return t2 if t2.stride(1) == 1 or n_cols == 1 else t2.contiguous()


def _elementwise(kernel, matrices: list[torch.Tensor], activation: str) -> None:
    """Launches `kernel` over (R, I) matrices with unit column stride: its inputs, then its outputs, in order."""
    n_rows, n_cols = matrices[0].shape
    block = _block(n_cols)
    rows = _TILE // block
    grid = (triton.cdiv(n_rows, rows), triton.cdiv(n_cols, block))
    if grid[1] > _MAX_GRID_Y:
        raise ValueError(f"glu: hidden size {n_cols} exceeds the kernel's limit of {_MAX_GRID_Y * block}")
    strides = [t.stride(0) for t in matrices]
    kernel[grid](
        *matrices, n_rows, n_cols, *strides, ACTIVATION=activation, ROWS=rows, BLOCK=block, num_warps=_NUM_WARPS
    )


@register_triton("glu")
def glu(gate: torch.Tensor, up: torch.Tensor, activation: str = "silu") -> torch.Tensor:
    n = gate.shape[-1]
    out = torch.empty(gate.shape, dtype=gate.dtype, device=gate.device)  # (..., I)
    if out.numel():
        _elementwise(_glu_fwd_kernel, [_as_rows(gate, n), _as_rows(up, n), out.view(-1, n)], activation)
    return out


@register_triton("glu_packed")
def glu_packed(x: torch.Tensor, activation: str = "silu", *, gate_first: bool = True) -> torch.Tensor:
    n = x.shape[-1] // 2
    out = torch.empty(*x.shape[:-1], n, dtype=x.dtype, device=x.device)  # (..., I)
    if out.numel():
        gate, up = split_packed(_as_rows(x, 2 * n), gate_first)  # (R, I) column halves of x, row stride 2I
        _elementwise(_glu_fwd_kernel, [gate, up, out.view(-1, n)], activation)
    return out


@register_triton("glu_backward")
def glu_backward(grad: torch.Tensor, gate: torch.Tensor, up: torch.Tensor, activation: str = "silu"):
    n = gate.shape[-1]
    dgate = torch.empty(gate.shape, dtype=gate.dtype, device=gate.device)  # (..., I)
    dup = torch.empty(up.shape, dtype=up.dtype, device=up.device)  # (..., I)
    if dgate.numel():
        inputs = [_as_rows(t, n) for t in (grad, gate, up)]
        _elementwise(_glu_bwd_kernel, [*inputs, dgate.view(-1, n), dup.view(-1, n)], activation)
    return dgate, dup


@register_triton("glu_packed_backward")
def glu_packed_backward(
    grad: torch.Tensor, x: torch.Tensor, activation: str = "silu", *, gate_first: bool = True
) -> torch.Tensor:
    n = x.shape[-1] // 2
    dx = torch.empty(x.shape, dtype=x.dtype, device=x.device)  # (..., 2I), both halves written by the kernel
    if dx.numel():
        gate, up = split_packed(_as_rows(x, 2 * n), gate_first)  # (R, I) views of x
        dgate, dup = split_packed(dx.view(-1, 2 * n), gate_first)  # (R, I) views of dx
        _elementwise(_glu_bwd_kernel, [_as_rows(grad, n), gate, up, dgate, dup], activation)
    return dx


# ---- fused projection + GLU --------------------------------------------------------------------------------------


@triton.jit
def _glu_linear_kernel(
    x_ptr,
    wg_ptr,
    wu_ptr,
    bg_ptr,
    bu_ptr,
    out_ptr,
    M,
    N,
    K,
    x_stride,
    w_stride,
    out_stride,
    ACTIVATION: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    DOT_FP32: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    """out (M, N) = act(x @ wg^T + bg) * (x @ wu^T + bu) for x (M, K), wg and wu (N, K) rows of one weight.

    Program order is grouped (Triton matmul tutorial): GROUP_M row blocks sweep the column blocks together, so a
    weight tile read from memory is reused from L2 by the other row blocks of its group.
    """
    pid = tl.program_id(0)
    n_blocks_m, n_blocks_n = tl.cdiv(M, BLOCK_M), tl.cdiv(N, BLOCK_N)
    group_first_m = (pid // (GROUP_M * n_blocks_n)) * GROUP_M
    group_size = min(n_blocks_m - group_first_m, GROUP_M)
    pid_m = group_first_m + (pid % (GROUP_M * n_blocks_n)) % group_size
    pid_n = (pid % (GROUP_M * n_blocks_n)) // group_size

    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    # rows and columns past M, N wrap to valid ones (loads stay unmasked along them); the store masks them off
    x_ptrs = x_ptr + (rm % M).to(tl.int64)[:, None] * x_stride + rk[None, :]  # (BLOCK_M, BLOCK_K)
    w_offs = (rn % N).to(tl.int64)[None, :] * w_stride + rk[:, None]  # (BLOCK_K, BLOCK_N): a tile of w^T
    wg_ptrs, wu_ptrs = wg_ptr + w_offs, wu_ptr + w_offs
    acc_g = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc_u = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k_in = rk < K - k0
        x = tl.load(x_ptrs, mask=k_in[None, :], other=0.0)
        wg = tl.load(wg_ptrs, mask=k_in[:, None], other=0.0)
        wu = tl.load(wu_ptrs, mask=k_in[:, None], other=0.0)
        if DOT_FP32:  # Triton's interpreter gets bf16 dots wrong; exact in fp32
            x, wg, wu = x.to(tl.float32), wg.to(tl.float32), wu.to(tl.float32)
        # "ieee" only affects fp32 operands: full fp32 products (TF32 would break the error bound of fp32 I/O)
        acc_g = tl.dot(x, wg, acc_g, input_precision="ieee")
        acc_u = tl.dot(x, wu, acc_u, input_precision="ieee")
        x_ptrs += BLOCK_K
        wg_ptrs += BLOCK_K
        wu_ptrs += BLOCK_K
    if HAS_BIAS:
        acc_g += tl.load(bg_ptr + rn % N).to(tl.float32)[None, :]
        acc_u += tl.load(bu_ptr + rn % N).to(tl.float32)[None, :]
    out = _activation(acc_g, ACTIVATION) * acc_u
    out_ptrs = out_ptr + rm.to(tl.int64)[:, None] * out_stride + rn[None, :]
    tl.store(out_ptrs, out.to(out_ptr.dtype.element_ty), mask=(rm[:, None] < M) & (rn[None, :] < N))


_GROUP_M = 8
_DECODE_MAX_M = 64


def _linear_tiles(m: int, dtype: torch.dtype) -> dict:
    """Tile rule of `glu_linear`, by the number of rows M = tokens.

    M <= 64 (decode, small batches): the weights dominate the traffic, so a thin 16-row tile streams them with
    many programs (I / 64); the row blocks of a group read the same weight tiles back to back, from L2. Larger M
    (prefill): a 128 x 64 output tile, effectively 128 x 128 of MMA work with the two accumulators, on 8 warps.
    BLOCK_K is the largest that compiles without register spills for sm_80 and sm_90 even when nothing is known
    about alignment (odd K); fp32 operands take half the BLOCK_K of fp16/bf16.
    """
    wide = 1 if dtype == torch.float32 else 2
    if m <= _DECODE_MAX_M:
        return dict(BLOCK_M=16, BLOCK_N=64, BLOCK_K=32 * wide, num_warps=4, num_stages=4)
    return dict(BLOCK_M=128, BLOCK_N=64, BLOCK_K=16 * wide, num_warps=8, num_stages=4)


@register_triton("glu_linear")
def glu_linear(
    x: torch.Tensor,
    w_gate_up: torch.Tensor,
    activation: str = "silu",
    *,
    gate_first: bool = True,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    k = x.shape[-1]
    n = w_gate_up.shape[0] // 2
    out = torch.empty(*x.shape[:-1], n, dtype=x.dtype, device=x.device)  # (..., I)
    if not out.numel():
        return out
    x2 = _as_rows(x, k)  # (M, K)
    w = w_gate_up if w_gate_up.stride(1) == 1 else w_gate_up.contiguous()  # (2I, K)
    top, bottom = w.chunk(2, dim=0)  # (I, K) row blocks of w
    wg, wu = (top, bottom) if gate_first else (bottom, top)
    bg, bu = (wg, wu) if bias is None else split_packed(bias.contiguous(), gate_first)  # not read without a bias
    m = x2.shape[0]
    tiles = _linear_tiles(m, x.dtype)
    grid = (triton.cdiv(m, tiles["BLOCK_M"]) * triton.cdiv(n, tiles["BLOCK_N"]),)
    _glu_linear_kernel[grid](
        *(x2, wg, wu, bg, bu, out, m, n, k, x2.stride(0), w.stride(0), n),
        ACTIVATION=activation,
        HAS_BIAS=bias is not None,
        DOT_FP32=interpret_mode(),
        GROUP_M=_GROUP_M,
        **tiles,
    )
    return out


# ---- every launchable configuration, for the ahead-of-time compile test ------------------------------------------


def _signature(kernel, ty: str) -> dict[str, str]:
    """Triton types of `kernel`'s parameters: *ty for pointers, i32 for sizes and strides, constexpr meta-parameters."""
    return {
        p.name: "constexpr" if p.is_constexpr else f"*{ty}" if p.name.endswith("_ptr") else "i32" for p in kernel.params
    }


def aot_configs() -> list[AOTConfig]:
    """Each (kernel, dtype, activation, tile) the launchers above can pick on a GPU (DOT_FP32 is interpreter only)."""
    configs = []
    for dtype, ty in _TL_DTYPES.items():
        for activation in ACTIVATIONS:
            for block in _BLOCKS:
                for name, kernel in (("glu_fwd", _glu_fwd_kernel), ("glu_bwd", _glu_bwd_kernel)):
                    const = dict(ACTIVATION=activation, ROWS=_TILE // block, BLOCK=block)
                    sig = _signature(kernel, ty)
                    configs.append(
                        AOTConfig(f"{name}[{ty},{activation},BLOCK={block}]", kernel, sig, const, _NUM_WARPS)
                    )
            for m in (1, _DECODE_MAX_M + 1):
                tiles = _linear_tiles(m, dtype)
                num_warps, num_stages = tiles.pop("num_warps"), tiles.pop("num_stages")
                for has_bias in (False, True):
                    const = dict(ACTIVATION=activation, HAS_BIAS=has_bias, DOT_FP32=False, GROUP_M=_GROUP_M, **tiles)
                    name = f"glu_linear[{ty},{activation},bias={has_bias},BM={tiles['BLOCK_M']}]"
                    sig = _signature(_glu_linear_kernel, ty)
                    configs.append(AOTConfig(name, _glu_linear_kernel, sig, const, num_warps, num_stages))
    return configs
