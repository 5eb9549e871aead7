"""Shared layers: norms, rotary and sinusoidal positions, the MLP. Pure functions where there are no weights."""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import nn

import fastllm.kernels as K
from fastllm.kernels._dispatch import use_cpu_kernel
from fastllm.kernels.cpu import MAX_M_PACKED, native
from fastllm.kernels.reference.linear import pack_weight
from fastllm.models.config import ModelConfig


class LayerNorm(nn.Module):
    def __init__(self, dim: int, eps: float, bias: bool = True):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, x.shape[-1:], self.weight, self.bias, self.eps)


class RMSNorm(nn.Module):
    """w * x / sqrt(mean(x^2) + eps), computed in fp32 and cast back (SWA-MLA does this; llm-scratch computes in the
    input dtype, which is the same thing in fp32 and within rounding in bf16)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()  # (..., d)
        y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)  # (..., d)
        return self.weight * y.to(x.dtype)


def make_norm(config: ModelConfig) -> nn.Module:
    if config.norm == "rmsnorm":
        return RMSNorm(config.d_model, config.norm_eps)
    return LayerNorm(config.d_model, config.norm_eps, config.norm_bias)


# ---- positions ---------------------------------------------------------------------------------------------------


def rope_cos_sin(positions: torch.Tensor, dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin (P, T, dim / 2) fp32 of angle p * theta^(-2i / dim) for positions (P, T) int."""
    inv_freq = theta ** (-torch.arange(0, dim, 2, device=positions.device, dtype=torch.float32) / dim)  # (dim/2,)
    angles = positions.to(torch.float32)[..., None] * inv_freq  # (P, T, dim/2)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, style: str) -> torch.Tensor:
    """Rotates the first 2 * cos.shape[-1] dims of x (B, T, H, D) by cos, sin (P, T, r/2), P in {1, B}; in fp32.

    style "half" pairs dim i with i + r/2 (GPT-NeoX, Llama); "interleaved" pairs 2i with 2i + 1 (GPT-J).
    """
    r = 2 * cos.shape[-1]
    xr, xp = x[..., :r].float(), x[..., r:]  # (B, T, H, r), (B, T, H, D - r) passes through
    c, s = cos[:, :, None, :], sin[:, :, None, :]  # (P, T, 1, r/2)
    if style == "half":
        x1, x2 = xr[..., : r // 2], xr[..., r // 2 :]  # (B, T, H, r/2) each
        out = torch.cat([x1 * c - x2 * s, x2 * c + x1 * s], dim=-1)  # (B, T, H, r)
    else:
        x1, x2 = xr[..., 0::2], xr[..., 1::2]  # (B, T, H, r/2) each
        out = torch.stack([x1 * c - x2 * s, x1 * s + x2 * c], dim=-1).flatten(-2)  # (B, T, H, r)
    out = out.to(x.dtype)
    return out if r == x.shape[-1] else torch.cat([out, xp], dim=-1)


def sinusoidal_positions(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """(P, T, dim) fp32: pe[p, 2i] = sin(p / 10000^(2i/dim)), pe[p, 2i+1] = cos(p / 10000^(2i/dim))."""
    div = torch.exp(torch.arange(0, dim, 2, device=positions.device, dtype=torch.float32) * (-math.log(1e4) / dim))
    angles = positions.to(torch.float32)[..., None] * div  # (P, T, ceil(dim/2))
    return torch.stack([angles.sin(), angles.cos()], dim=-1).flatten(-2)[..., :dim]  # (P, T, dim)


# ---- linear ------------------------------------------------------------------------------------------------------


class Linear(nn.Linear):
    """nn.Linear (same parameters, same state_dict) whose inference calls on the CPU go through fastllm's C++ GEMV.

    Eager: `fastllm::linear` on the row-major weight (other calls than a decode step's few rows are F.linear).
    Inside the engine's compiled CPU step of a model that `packs_when_frozen` (weights frozen), a decode-sized call
    runs `fastllm::linear_packed` on `pack_weight(weight)`, which freezing folds into a constant, so each weight
    streams as one run of memory per tile (bf16 on CPUs with AVX512-BF16: the "vnni2" layout, `_bf16_layout`).
    Otherwise under torch.compile, and whenever autograd records, it is F.linear itself (inductor's GEMMs; the usual
    backward)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not x.is_cpu or (torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad)):
            return F.linear(x, self.weight, self.bias)
        if not torch.compiler.is_compiling():
            return native.op("linear", x.device)(x, self.weight, self.bias)
        decode_sized = x.numel() <= MAX_M_PACKED * self.in_features
        if decode_sized and x.dtype == self.weight.dtype and _packing_traced():
            layout = _bf16_layout() if self.weight.dtype == torch.bfloat16 else "tiles"
            packed = pack_weight(self.weight, layout=layout)
            return native.op("linear_packed", x.device)(x, packed, self.bias, self.out_features)
        return F.linear(x, self.weight, self.bias)


_packing = False  # on while the engine traces a compiled CPU step of a model that packs_when_frozen


def packs_when_frozen(model: nn.Module, rows: int | None = None) -> bool:
    """Whether the engine's compiled CPU decode step (weights frozen) of `rows` rows (None: any) runs this model's
    linears on `fastllm::linear_packed`, where the C++ kernels are dispatched and every linear layer is bf16: at any
    row count without biases; with biases at one row, on CPUs where bf16 packs "vnni2" (`_bf16_layout`). The step
    then runs inside `fastllm.kernels.cpu.decode_threads` (torch's pool at one thread).

    Measured on 2 AVX-512 cores, the two compiled paths interleaved in one process: inductor left the bias-free bf16
    linears of the SWA-MLA 262M model on aten::mm (~12 GB/s), and packing them took its step from 32.4 to 25.9 ms
    (35.7 -> 29.7 in a slower phase); GPT-2's biased bf16 linears became oneDNN / C++ GEMMs that beat the 8-row tiles
    (batch 1: 11.0 vs 13.7 ms, batch 8: 23.5 vs 29.0), and so did fp32 (GPT-2: 21 vs 28 ms; fp32 tiles stream
    slower than fp32 rows here). A mix (packed layers next to inductor GEMMs on one torch thread) was worst (GPT-2
    bf16 with only its bias-free head packed: 16.9 ms), hence all or none. On an AMX Xeon (2 cores) "vnni2" took the
    SWA-MLA step from 28.0-28.5 to 25.2-26.0 ms and GPT-2 bf16 at batch 1 from inductor's 11.7-11.9 to 11.0-11.3 ms;
    at batch 8 GPT-2 stays faster on inductor (16.0 against 22.3), hence biases pack at one row only."""
    linears = [m for m in model.modules() if isinstance(m, Linear)]
    if not linears or not all(m.weight.dtype == torch.bfloat16 for m in linears):
        return False
    if not use_cpu_kernel("linear_packed", torch.device("cpu")):
        return False
    return all(m.bias is None for m in linears) or (rows == 1 and _bf16_layout() == "vnni2")


@contextlib.contextmanager
def packing_linears(on: bool):
    """Sets what `Linear` reads while torch.compile traces it (the engine wraps its compiled CPU step in this)."""
    global _packing
    outer, _packing = _packing, on
    try:
        yield
    finally:
        _packing = outer


@torch.compiler.assume_constant_result
def _bf16_layout() -> str:
    """The layout packed bf16 weights take: "vnni2" where the kernels run vdpbf16ps (AVX512-BF16), whose 16-row
    tiles stream from DRAM ~15% faster at one activation row than the 8-row tiles (27-29 against 23-25 GB/s on 2
    cores, GPT-2's shapes) and 40-60% faster at 3-8; "tiles" elsewhere (no kernel reads "vnni2" faster there)."""
    from fastllm.kernels import cpu

    return "vnni2" if cpu.isa() == "avx512bf16" else "tiles"


@torch.compiler.assume_constant_result
def _packing_traced() -> bool:
    """`packing_linears` on and freezing on (without it, packing would run on every call); read while tracing."""
    from torch._inductor import config

    return _packing and bool(config.freezing)


# ---- MLP ---------------------------------------------------------------------------------------------------------


class MLP(nn.Module):
    """Position-wise feed-forward: w_out(act(w_in x)), or a GLU w_out(act(gate) * up) through fastllm.kernels.

    GLU weights keep the upstream layout instead of being reordered at load: packed `w_in` (2 * d_ff rows) with the
    gate as the first or the second half (the kernel reads either), or separate `w_gate` / `w_up`. In inference,
    where dispatch picks the Triton kernel of `glu_linear`, a packed GLU runs the projection and the GLU as one
    matmul (the 2 * d_ff-wide projection is never written); elsewhere, and whenever autograd records, it is
    w_in then glu_packed, which computes the same thing. The plain GELU MLP has no fused kernel (nothing to fuse
    after the matmul), so it calls F.gelu.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        d, ff, bias = config.d_model, config.d_ff, config.mlp_bias
        self.kind, self.layout, self.activation = config.mlp, config.glu_layout, config.glu_activation
        if self.kind == "glu" and self.layout == "separate":
            self.w_gate = Linear(d, ff, bias=bias)
            self.w_up = Linear(d, ff, bias=bias)
        else:
            self.w_in = Linear(d, 2 * ff if self.kind == "glu" else ff, bias=bias)
        self.w_out = Linear(ff, d, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "glu" and self.layout == "separate":
            h = K.glu(self.w_gate(x), self.w_up(x), self.activation)  # (B, T, ff)
        elif self.kind == "glu" and self._fused_glu(x):
            h = K.glu_linear(x, self.w_in.weight, self.activation, self.layout, bias=self.w_in.bias)  # (B, T, ff)
        elif self.kind == "glu":
            h = K.glu_packed(self.w_in(x), self.activation, gate_first=self.layout == "gate_first")  # (B, T, ff)
        else:
            h = F.gelu(self.w_in(x), approximate="tanh" if self.kind == "gelu_tanh" else "none")  # (B, T, ff)
        return self.w_out(h)

    def _fused_glu(self, x: torch.Tensor) -> bool:
        """Whether the packed GLU takes the fused `K.glu_linear` path: no autograd recording, Triton dispatched."""
        if not isinstance(self.w_in, nn.Linear):  # fastllm.quant.Int8Linear: its own kernel, then the GLU
            return False
        records = torch.is_grad_enabled() and (x.requires_grad or self.w_in.weight.requires_grad)
        return not records and _glu_linear_backend(x.device) == "triton"


@torch.compiler.assume_constant_result
def _glu_linear_backend(device: torch.device) -> str:
    """K.backend_for("glu_linear", device). torch.compile calls it once, while tracing, and keeps the path it picks
    (importing the Triton kernels cannot be traced)."""
    return K.backend_for("glu_linear", device)
