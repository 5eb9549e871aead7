"""fastllm.kernels: the public functional API of fastllm's kernels (installed from the top-level `kernels/`).

Every op is a `torch.library` custom op (`torch.ops.fastllm.<name>`, see `_ops.py` and `_ops_inference.py`) with a fake
implementation, so `torch.compile(fullgraph=True)` traces models that call it. At run time each call picks its backend
in one place, `_dispatch.backend_for` (the rule of DESIGN.md): the Triton kernel for CUDA tensors (or CPU tensors under
`TRITON_INTERPRET=1`) when one is registered for the op, else the eager reference in `fastllm.kernels.reference`;
`FASTLLM_KERNELS=reference|triton` forces a side and a forced side that cannot run raises. CPU calls of the ops with a
C++ kernel run it; where fastllm's C++ torch operators are loaded (`fastllm.kernels.cpu.native`, which `generate` does
on the CPU) they call `torch.ops.fastllm_cpu.<name>` instead, the same kernel without Python in between.

Layouts follow flash-attn: q (B, T, H, D), k and v (B, S, Hkv, D) with H % Hkv == 0 (MHA, GQA, MQA); query head h
reads kv head h // (H // Hkv). fp32, fp16 and bf16 inputs; fp32 accumulation; outputs in the input dtype.
"""

import torch

from fastllm.kernels import _ops, _ops_inference
from fastllm.kernels._attention import mla_decode as mla_decode
from fastllm.kernels._attention import sliding_window_attention as sliding_window_attention
from fastllm.kernels._attention import swa_decode as swa_decode
from fastllm.kernels._checks import _require
from fastllm.kernels._dispatch import backend_for as backend_for
from fastllm.kernels.cpu import native
from fastllm.kernels.reference.glu import ACTIVATIONS, glu_expr, split_packed
from fastllm.kernels.reference.linear import dequantize_int8 as dequantize_int8
from fastllm.kernels.reference.linear import pack_int8 as pack_int8
from fastllm.kernels.reference.linear import pack_weight as pack_weight
from fastllm.kernels.reference.linear import packed_layout, packed_shape
from fastllm.kernels.reference.linear import quantize_int8 as quantize_int8
from fastllm.kernels.reference.sampling import check_flag as check_sample_flag
from fastllm.kernels.reference.sampling import per_row, seeds_for


def glu(gate, up, activation="silu"):
    """Gated linear unit act(gate) * up, differentiable in both inputs.

    Args:
        gate, up: (..., I), same shape and float dtype.
        activation: "silu" (SwiGLU), "gelu" (erf GELU, GeGLU) or "gelu_tanh" (tanh-approximated GELU).

    Returns (..., I) in gate's dtype, computed in fp32.
    """
    _require(
        gate.shape == up.shape and gate.dtype == up.dtype and gate.is_floating_point(),
        f"glu: gate {tuple(gate.shape)} {gate.dtype} and up {tuple(up.shape)} {up.dtype} must match",
    )
    _require(activation in ACTIVATIONS, f"glu: unknown activation {activation!r}; expected one of {ACTIVATIONS}")
    if torch.compiler.is_compiling() and _traced_backend("glu", gate.device) == "reference":
        return glu_expr(gate, up, activation)  # plain torch: inductor fuses it with its neighbours
    return _ops.glu(gate, up, activation)


def glu_packed(x, activation="silu", *, gate_first=True):
    """GLU on a packed projection x (..., 2I): x = [gate | up] (gate_first=True) or [up | gate].

    Same activations as `glu`; differentiable in x. Returns (..., I) in x's dtype.
    """
    _require(
        x.is_floating_point() and x.dim() >= 1 and x.shape[-1] % 2 == 0,
        f"glu_packed: x must be float with an even last dim, got {tuple(x.shape)} {x.dtype}",
    )
    _require(activation in ACTIVATIONS, f"glu_packed: unknown activation {activation!r}; expected {ACTIVATIONS}")
    if torch.compiler.is_compiling() and _traced_backend("glu_packed", x.device) == "reference":
        return glu_expr(*split_packed(x, bool(gate_first)), activation)  # plain torch: inductor fuses it
    return _ops.glu_packed(x, activation, bool(gate_first))


@torch.compiler.assume_constant_result
def _traced_backend(op: str, device: torch.device) -> str:
    """backend_for(op, device), read once while torch.compile traces: where it is the reference, the traced graph
    gets the reference's plain torch expression instead of the opaque op, so inductor can fuse it."""
    return backend_for(op, device)


def glu_linear(x, w_gate_up, activation="silu", layout="gate_first", *, bias=None):
    """Projection and GLU in one matmul: act(x @ Wg^T + bg) * (x @ Wu^T + bu), the (..., 2I) projection never stored.

    Args:
        x: (..., K) float.
        w_gate_up: (2I, K), same dtype and device as x, in nn.Linear's (out_features, in_features) layout: the packed
            weight of a GLU MLP's input projection.
        activation: as in `glu`.
        layout: "gate_first" (rows [0, I) of w_gate_up and bias are the gate, [I, 2I) the up projection) or
            "gate_second" (rows [0, I) are up, [I, 2I) the gate: the SWA-MLA and llm-scratch-v2 checkpoints).
        bias: (2I,) or None, laid out like the rows of w_gate_up.

    Returns (..., I) in x's dtype. Equals `glu_packed(F.linear(x, w_gate_up, bias), activation,
    gate_first=layout == "gate_first")` (the reference path computes exactly that); the Triton kernel accumulates
    in fp32 and applies the GLU before rounding once. Built for inference; it is differentiable too, with a
    backward that recomputes the projection in eager torch.
    """
    _require(
        x.is_floating_point() and x.dim() >= 1 and w_gate_up.dim() == 2,
        f"glu_linear: x must be float (..., K) and w_gate_up 2-D, got {tuple(x.shape)} and {tuple(w_gate_up.shape)}",
    )
    _require(
        w_gate_up.shape[0] % 2 == 0 and w_gate_up.shape[1] == x.shape[-1],
        f"glu_linear: w_gate_up must be (2I, K={x.shape[-1]}), got {tuple(w_gate_up.shape)}",
    )
    _require(
        w_gate_up.dtype == x.dtype and w_gate_up.device == x.device,
        f"glu_linear: w_gate_up ({w_gate_up.dtype}, {w_gate_up.device}) must match x ({x.dtype}, {x.device})",
    )
    if bias is not None:
        _require(
            bias.shape == (w_gate_up.shape[0],) and bias.dtype == x.dtype and bias.device == x.device,
            f"glu_linear: bias must be ({w_gate_up.shape[0]},) {x.dtype}, got {tuple(bias.shape)} {bias.dtype}",
        )
    _require(activation in ACTIVATIONS, f"glu_linear: unknown activation {activation!r}; expected {ACTIVATIONS}")
    layouts = ("gate_first", "gate_second")
    _require(layout in layouts, f"glu_linear: unknown layout {layout!r}; expected one of {layouts}")
    return _ops.glu_linear(x, w_gate_up, bias, activation, layout == "gate_first")


def grouped_linear(x, weight, bias=None):
    """Independent linear layers side by side, one per group: y[..., g, :] = x[..., g, :] @ weight[g]^T + bias[g].

    What MLA's absorbed decode runs per head (q_nope into the latent space with W_UK^T, the latent output out of it
    with W_UV): a batched matmul with one row per group, which torch runs as a bmm of M = 1 (inductor: one loop on
    one thread, ~0.8 ms for 16 heads of (256, 128) bf16 from DRAM).

    Args:
        x: (..., G, K) float.
        weight: (G, N, K) in x's dtype, on x's device; a strided view is fine (each group's rows with contiguous
            columns).
        bias: (G, N) in x's dtype, or None.

    Returns (..., G, N) in x's dtype, accumulated in fp32. On the CPU, calls with at most `cpu.MAX_M` rows per group
    (decode) run fastllm's C++ GEMV, the groups spread over the threads; otherwise fp32 einsum (the reference).
    Inference only: there is no backward.
    """
    _require(x.is_floating_point() and x.dim() >= 2, f"grouped_linear: x must be float (..., G, K), got {x.dtype}")
    G, K = x.shape[-2], x.shape[-1]
    _require(
        weight.dim() == 3 and weight.shape[0] == G and weight.shape[2] == K and weight.dtype == x.dtype,
        f"grouped_linear: weight must be (G={G}, N, K={K}) {x.dtype}, got {tuple(weight.shape)} {weight.dtype}",
    )
    _require(weight.device == x.device, f"grouped_linear: x ({x.device}) and weight ({weight.device}) differ")
    if bias is not None:
        N = weight.shape[1]
        _require(
            bias.shape == (G, N) and bias.dtype == x.dtype and bias.device == x.device,
            f"grouped_linear: bias must be ({G}, {N}) {x.dtype} on {x.device}, got {tuple(bias.shape)} {bias.dtype}",
        )
    return native.op("grouped_linear", x.device)(x, weight, bias)


def int8_linear(x, packed, scale, bias=None, *, activations="float"):
    """Linear layer with int8 weights (weight-only quantization): x @ (codes * scale[:, None])^T + bias.

    Args:
        x: (..., K) float (fp32 or bf16 for the CPU kernel; any float elsewhere).
        packed: the codes (N, K) int8 of `quantize_int8`, packed by `pack_int8`: (ceil(N / 8), ceil(K / 64), 8, 64)
            int8 (layout "tiles"), or (ceil(N / 16), ceil(K / 4), 16, 4) uint8 (layout "vnni", codes + 128: what
            the W8A8 kernel reads fastest; float activations then take the reference path). The layout fixes K
            only up to its zero padding: an x with a K of the same padded width reads padding zeros (Int8Linear
            checks K exactly).
        scale: (N,) float32, one per output row.
        bias: (N,) in x's dtype, or None.

        activations: "float" (weight-only, above) or "int8" (W8A8): each row of x is quantized too, per row and
            symmetric (scale max |row| / 127, codes rounded half to even), and the dot products run exactly in
            integers: y = float(q_x @ codes^T) * s_x * scale + bias (`reference.linear.int8_linear_w8a8`, which the
            CPU kernel equals to the bit). Cheaper at batch > 1 on CPUs with AVX-512 VNNI (one instruction per 64
            multiply-adds, no conversion), at the cost of rounding the activations (state it as a perplexity
            change).

    Returns (..., N) in x's dtype, accumulated in fp32. On the CPU, calls with at most `cpu.MAX_M_PACKED` rows (a
    decode step) run fastllm's C++ kernel, which streams each weight tile once for all rows and dequantizes in
    registers; otherwise (prefill, other devices, FASTLLM_KERNELS=reference) the weight is dequantized to fp32 and
    multiplied by torch (W8A8: torch's int8 matmul). Inference only: there is no backward.
    """
    _require(x.is_floating_point() and x.dim() >= 1, f"int8_linear: x must be float (..., K), got {x.dtype}")
    _require(
        scale.dim() == 1 and scale.dtype == torch.float32,
        f"int8_linear: scale must be (N,) float32, got {tuple(scale.shape)} {scale.dtype}",
    )
    N, K = scale.shape[0], x.shape[-1]
    layout = packed_layout(packed)
    _require(
        packed.dtype in (torch.int8, torch.uint8) and tuple(packed.shape) == packed_shape(N, K, layout),
        f"int8_linear: packed must be {packed_shape(N, K)} int8 (pack_int8) or {packed_shape(N, K, 'vnni')} uint8 "
        f"(pack_int8(..., layout='vnni')) for N={N} (from scale) and K={K} (from x), got {tuple(packed.shape)} "
        f"{packed.dtype}",
    )
    _require(
        packed.device == x.device == scale.device,
        f"int8_linear: x ({x.device}), packed ({packed.device}) and scale ({scale.device}) must share a device",
    )
    if bias is not None:
        _require(
            bias.shape == (N,) and bias.dtype == x.dtype and bias.device == x.device,
            f"int8_linear: bias must be ({N},) {x.dtype} on {x.device}, got {tuple(bias.shape)} {bias.dtype}",
        )
    _require(activations in ("float", "int8"), f"int8_linear: activations must be 'float' or 'int8': {activations!r}")
    return native.op("int8_linear" if activations == "float" else "w8a8_linear", x.device)(x, packed, scale, bias)


def sample(
    logits,
    *,
    temperature=1.0,
    top_k=0,
    top_p=1.0,
    min_p=0.0,
    repetition_penalty=1.0,
    prev_tokens=None,
    generator=None,
    noise=None,
    seed=None,
    nan_flag=None,
):
    """Draw one next-token id per row. Order: penalty, temperature, top-k, top-p, min-p, sample.

    Args:
        logits: (B, V) float; NaN or +inf, or a row that is all -inf, is an error (see nan_flag).
        temperature: >= 0, a scalar or a (B,) tensor; 0 is greedy for that row (argmax of the penalised logits,
            the first index on ties).
        top_k: int >= 0 or (B,); keeps every token whose logit is >= the k-th largest (ties at the boundary are
            all kept); 0 or k >= V disables it.
        top_p: in [0, 1] or (B,); keeps the smallest prefix of tokens, by descending probability after top-k, whose
            mass reaches top_p (the crossing token included; tokens tied with the last one are kept); 1 disables.
        min_p: in [0, 1] or (B,); keeps tokens with probability >= min_p * the top token's probability.
        repetition_penalty: > 0 or (B,); Hugging Face convention: the logit of every token in prev_tokens is
            divided by the penalty if positive, multiplied if negative (once per token, whatever its count).
        prev_tokens: (B, L) integer ids or None; negative ids (e.g. -1) are padding and ignored.
        generator: torch.Generator on the logits' device for reproducible draws (same generator state, same ids on
            the same device and backend); None uses the global RNG.
        noise: (B, V) float32 U[0, 1) noise to use instead of drawing it (then generator and seed are ignored).
        seed: instead of generator: an int, or an integer tensor of shape (1,) (one seed for the batch) or (B,) (one
            per row: a row's draw then depends on its own seed and logits only). An int costs a copy to the device;
            a device tensor costs nothing.
        nan_flag: None, or an int32 (1,) tensor on the logits' device. The Triton kernel cannot raise without a
            host sync, so it ORs error bits into a flag (and still returns ids in [0, V)): into nan_flag when given,
            for the caller to check with `check_sample_flag(nan_flag)` when it syncs anyway (e.g. once per
            generation); else into its own flag, checked once per call (one host read). The reference path raises
            ValueError at once either way and never writes the flag.

    Returns ids (B,) int64.

    How it is built: custom ops cannot take a torch.Generator, so `sample` turns the randomness into a tensor:
    without `noise` it draws one int64 seed from `generator` on the logits' device (no host sync; skipped for a
    Python temperature of 0) and calls the custom op `fastllm::sample_philox`; with `noise` it calls
    `fastllm::sample_from_noise`. Both take E = -log(u) ~ Exp(1) per token and return argmax(p_i / E_i) over the
    surviving tokens: an exact draw from the renormalised filtered distribution, with no normalisation or
    cumulative sum. The Triton kernel makes u with Philox in registers and finds the top-k / top-p cut by a radix
    select, without sorting (`fastllm.kernels.triton.sampling`); the reference seeds a torch generator with the
    seed and sorts, so one seed gives different ids on the two paths. Under torch.compile(fullgraph=True) pass
    generator=None (the global RNG), a seed tensor, or noise.

    Example:
        >>> logits = torch.randn(2, 50)
        >>> ids = sample(logits, temperature=torch.tensor([0.0, 0.8]), top_p=0.9,
        ...              generator=torch.Generator().manual_seed(0))
        >>> ids.shape, bool(ids[0] == logits[0].argmax())
        (torch.Size([2]), True)
    """
    _require(
        logits.dim() == 2 and logits.is_floating_point(),
        f"sample: logits must be a float (B, V) tensor, got {tuple(logits.shape)} {logits.dtype}",
    )
    B, device = logits.shape[0], logits.device
    if prev_tokens is not None:
        _require(
            prev_tokens.dim() == 2 and prev_tokens.shape[0] == B and not prev_tokens.is_floating_point(),
            f"sample: prev_tokens must be an integer (B={B}, L) tensor, got {tuple(prev_tokens.shape)}",
        )
    if nan_flag is not None:
        _require(
            nan_flag.shape == (1,) and nan_flag.dtype == torch.int32 and nan_flag.device == device,
            f"sample: nan_flag must be an int32 (1,) tensor on {device}, got {tuple(nan_flag.shape)} "
            f"{nan_flag.dtype} on {nan_flag.device}",
        )
    scalars = (temperature, top_k, top_p, min_p, repetition_penalty)
    if noise is None and seed is None and all(type(a) in (int, float) for a in scalars) and scalars == (0, 0, 1, 0, 1):
        ids = _ops_inference.plain_greedy_cpu(logits)  # greedy, the rest at its defaults: no parameter tensors
        if ids is not None:
            return ids
    params = (
        per_row(temperature, B, torch.float32, device, "temperature"),
        per_row(top_k, B, torch.int64, device, "top_k"),
        per_row(top_p, B, torch.float32, device, "top_p"),
        per_row(min_p, B, torch.float32, device, "min_p"),
        per_row(repetition_penalty, B, torch.float32, device, "repetition_penalty"),
    )
    if noise is not None:
        _require(noise.shape == logits.shape, f"sample: noise must be {tuple(logits.shape)}, got {tuple(noise.shape)}")
        return _ops_inference.sample_from_noise(logits, noise, *params, prev_tokens, nan_flag)
    if seed is None and isinstance(temperature, (int, float)) and temperature == 0:
        seed = torch.zeros(1, dtype=torch.int64, device=device)  # greedy: leave the generator alone
    seeds = seeds_for(logits, seed, generator)
    return native.op("sample_philox", device)(logits, seeds, *params, prev_tokens, nan_flag)  # greedy rows: C++


__all__ = [
    "backend_for",
    "check_sample_flag",
    "glu",
    "glu_linear",
    "glu_packed",
    "grouped_linear",
    "mla_decode",
    "sample",
    "sliding_window_attention",
    "swa_decode",
]
