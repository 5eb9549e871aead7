"""Eager reference for gated linear units: act(gate) * up, with separate or packed gate/up, and its backward; and
`glu_linear`, the input projection of a GLU MLP followed by the GLU.

Computed in fp32 (fp64 inputs stay fp64), returned in the input dtype. Per element: reads 2 values, writes 1
(forward); reads 3, writes 2 (backward).
"""

import math

import torch
import torch.nn.functional as F

ACTIVATIONS = ("silu", "gelu", "gelu_tanh")
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_GELU_TANH_C = 0.044715  # the cubic coefficient of the tanh approximation of GELU


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def activate(x: torch.Tensor, activation: str) -> torch.Tensor:
    if activation == "silu":
        return F.silu(x)
    if activation == "gelu":
        return F.gelu(x)
    if activation == "gelu_tanh":
        return F.gelu(x, approximate="tanh")
    raise ValueError(f"unknown GLU activation {activation!r}; expected one of {ACTIVATIONS}")


def activate_grad(x: torch.Tensor, activation: str) -> torch.Tensor:
    """d act(x) / dx, written out.

    silu:      s(x) * (1 + x * (1 - s(x)))                      with s the logistic sigmoid
    gelu:      Phi(x) + x * phi(x)                               Phi, phi: standard normal CDF and density
    gelu_tanh: 0.5 * (1 + t) + 0.5 * x * (1 - t^2) * u'(x)       t = tanh(u(x)), u = sqrt(2/pi) (x + 0.044715 x^3)
    """
    if activation == "silu":
        s = torch.sigmoid(x)
        return s * (1 + x * (1 - s))
    if activation == "gelu":
        cdf = 0.5 * (1 + torch.erf(x / math.sqrt(2.0)))
        pdf = torch.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)
        return cdf + x * pdf
    if activation == "gelu_tanh":
        t = torch.tanh(_SQRT_2_OVER_PI * (x + _GELU_TANH_C * x**3))
        du = _SQRT_2_OVER_PI * (1 + 3 * _GELU_TANH_C * x * x)
        return 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * du
    raise ValueError(f"unknown GLU activation {activation!r}; expected one of {ACTIVATIONS}")


def split_packed(x: torch.Tensor, gate_first: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(gate, up) halves of x (..., 2I) along the last dim; gate_first=False means x = [up | gate]."""
    a, b = x.chunk(2, dim=-1)  # (..., I) each
    return (a, b) if gate_first else (b, a)


# Elements per block of the blocked CPU path: its fp32 temporaries (a few MB) stay in cache, where whole-tensor fp32
# temporaries of a (4096, 11008) bf16 GLU made it 4x slower than plain PyTorch in bf16.
_BLOCK = 1 << 18


def _blocks(*tensors: torch.Tensor):
    """Views of same-shaped 16-bit tensors as (N, I) matrices cut into row blocks of about _BLOCK elements, or None
    when the blocked path does not apply (fp32, autograd, small, broadcast or non-contiguous inputs, not the CPU)."""
    x = tensors[0]
    if (
        x.dtype not in (torch.float16, torch.bfloat16)  # fp32 / fp64 need no conversion: no temporaries to save
        or x.device.type != "cpu"
        or x.numel() <= _BLOCK
        or x.dim() == 0
        or (torch.is_grad_enabled() and any(t.requires_grad for t in tensors))
        or any(t.shape != x.shape or not t.is_contiguous() for t in tensors)
    ):
        return None
    rows = max(1, _BLOCK // x.shape[-1])
    mats = [t.view(-1, x.shape[-1]) for t in tensors]
    return [[m[s : s + rows] for m in mats] for s in range(0, mats[0].shape[0], rows)]


def glu_expr(gate: torch.Tensor, up: torch.Tensor, activation: str = "silu") -> torch.Tensor:
    """act(gate) * up as one torch expression (what torch.compile fuses): (..., I) in gate's dtype."""
    dt = _compute_dtype(gate)
    return (activate(gate.to(dt), activation) * up.to(dt)).to(gate.dtype)  # (..., I)


def glu(gate: torch.Tensor, up: torch.Tensor, activation: str = "silu") -> torch.Tensor:
    """Reference of `fastllm.kernels.glu`: act(gate) * up, (..., I) in gate's dtype."""
    dt = _compute_dtype(gate)
    out = torch.empty_like(gate) if up.dtype == gate.dtype else None
    blocks = _blocks(gate, up, out) if out is not None else None
    if blocks is None:
        return glu_expr(gate, up, activation)  # (..., I)
    for g, u, o in blocks:  # the same arithmetic, one cache-sized row block at a time
        o.copy_(activate(g.to(dt), activation).mul_(u.to(dt)))
    return out  # (..., I)


def glu_packed(x: torch.Tensor, activation: str = "silu", *, gate_first: bool = True) -> torch.Tensor:
    """Reference of `fastllm.kernels.glu_packed`: x (..., 2I) = [gate | up] (or [up | gate]) -> (..., I)."""
    gate, up = split_packed(x, gate_first)
    return glu(gate, up, activation)  # (..., I)


def glu_backward(grad: torch.Tensor, gate: torch.Tensor, up: torch.Tensor, activation: str = "silu"):
    """(d gate, d up) of out = act(gate) * up: d gate = grad * up * act'(gate), d up = grad * act(gate)."""
    dt = _compute_dtype(gate)
    dgate, dup = torch.empty_like(gate), torch.empty_like(up)
    blocks = _blocks(grad, gate, up, dgate, dup) if grad.dtype == gate.dtype == up.dtype else None
    for go, g, u, dg, du in blocks or [[grad, gate, up, None, None]]:
        g, u, go = g.to(dt), u.to(dt), go.to(dt)  # (..., I)
        dg_block = go * u * activate_grad(g, activation)  # (..., I)
        du_block = go * activate(g, activation)  # (..., I)
        if blocks is None:
            return dg_block.to(gate.dtype), du_block.to(up.dtype)
        dg.copy_(dg_block)
        du.copy_(du_block)
    return dgate, dup


def glu_packed_backward(grad: torch.Tensor, x: torch.Tensor, activation: str = "silu", *, gate_first: bool = True):
    """d x (..., 2I) of `glu_packed(x, activation, gate_first=gate_first)`, laid out like x."""
    dgate, dup = glu_backward(grad, *split_packed(x, gate_first), activation)  # (..., I) each
    return torch.cat([dgate, dup] if gate_first else [dup, dgate], dim=-1)  # (..., 2I)


def glu_linear(
    x: torch.Tensor,
    w_gate_up: torch.Tensor,
    activation: str = "silu",
    *,
    gate_first: bool = True,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """Reference of `fastllm.kernels.glu_linear`: glu_packed(F.linear(x, w_gate_up, bias)), x (..., K) -> (..., I).

    w_gate_up is (2I, K) in nn.Linear's layout; the projection is rounded to x's dtype before the GLU, exactly as
    the model's MLP computes it unfused.
    """
    return glu_packed(F.linear(x, w_gate_up, bias), activation, gate_first=gate_first)  # (..., I)
