"""torch.library registrations: every fastllm kernel is a custom op `fastllm::<name>` with a fake implementation.

The fakes give torch.compile shapes and dtypes without running anything, so `torch.compile(fullgraph=True)` traces
models that call `fastllm.kernels` (eager, aot_eager and inductor backends). Each real implementation asks
`_dispatch.pick` for the backend at call time, so the choice follows the device and the environment even inside a
compiled graph. Outputs are always freshly allocated contiguous tensors (custom ops may not alias their inputs,
and the fakes promise contiguous strides).

Encodings forced by the custom-op type system: `window=None` is passed as -1, `softmax_scale=None` is resolved by
the public function, and the optional sampling parameters are per-row tensors. Differentiable ops register their
backward as another custom op (`sliding_window_attention_backward`, `glu_backward`, `glu_packed_backward`) so
that a Triton backward can plug into the same dispatch; the lse output of `sliding_window_attention` is not
differentiable. `glu_linear` (projection + GLU in one matmul) is an inference kernel; its autograd recomputes the
projection in eager torch. The inference-only ops (decode attention, sampling, the linears) are in
`_ops_inference.py`.
"""

import torch
from torch import Tensor

from fastllm.kernels import _dispatch
from fastllm.kernels.reference.attention import sliding_window_attention as _swa_ref
from fastllm.kernels.reference.attention import sliding_window_attention_backward as _swa_bwd_ref
from fastllm.kernels.reference.glu import glu as _glu_ref
from fastllm.kernels.reference.glu import glu_backward as _glu_bwd_ref
from fastllm.kernels.reference.glu import glu_linear as _glu_linear_ref
from fastllm.kernels.reference.glu import glu_packed as _glu_packed_ref
from fastllm.kernels.reference.glu import glu_packed_backward as _glu_packed_bwd_ref


def _window(window: int) -> int | None:
    return None if window < 0 else window


# ---- sliding-window attention (prefill), differentiable in q, k, v, rel_bias ------------------------------------


@torch.library.custom_op("fastllm::sliding_window_attention", mutates_args=())
def sliding_window_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    window: int,
    softmax_scale: float,
    alibi_slopes: Tensor | None,
    rel_bias: Tensor | None,
    sink_tokens: int,
    cu_seqlens: Tensor | None,
) -> tuple[Tensor, Tensor]:
    impl = _dispatch.pick("sliding_window_attention", q.device, _swa_ref)
    o, lse = impl(
        q,
        k,
        v,
        _window(window),
        softmax_scale=softmax_scale,
        alibi_slopes=alibi_slopes,
        rel_bias=rel_bias,
        sink_tokens=sink_tokens,
        cu_seqlens=cu_seqlens,
        return_lse=True,
    )
    return o.contiguous(), lse.contiguous()


@sliding_window_attention.register_fake
def _(q, k, v, window, softmax_scale, alibi_slopes, rel_bias, sink_tokens, cu_seqlens):
    B, T, H, _ = q.shape
    return q.new_empty(B, T, H, v.shape[-1]), q.new_empty(B, H, T, dtype=torch.float32)


@torch.library.custom_op("fastllm::sliding_window_attention_backward", mutates_args=())
def sliding_window_attention_backward(
    do: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    o: Tensor,
    lse: Tensor,
    window: int,
    softmax_scale: float,
    alibi_slopes: Tensor | None,
    rel_bias: Tensor | None,
    sink_tokens: int,
    cu_seqlens: Tensor | None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    impl = _dispatch.pick("sliding_window_attention_backward", q.device, _swa_bwd_ref)
    dq, dk, dv, drel = impl(
        do,
        q,
        k,
        v,
        o,
        lse,
        _window(window),
        softmax_scale=softmax_scale,
        alibi_slopes=alibi_slopes,
        rel_bias=rel_bias,
        sink_tokens=sink_tokens,
        cu_seqlens=cu_seqlens,
    )
    drel = q.new_empty(0) if drel is None else drel.contiguous()  # custom ops cannot return None
    return dq.contiguous(), dk.contiguous(), dv.contiguous(), drel


@sliding_window_attention_backward.register_fake
def _(do, q, k, v, o, lse, window, softmax_scale, alibi_slopes, rel_bias, sink_tokens, cu_seqlens):
    drel = q.new_empty(0) if rel_bias is None else rel_bias.new_empty(rel_bias.shape)
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape), drel


def _swa_setup(ctx, inputs, output):
    q, k, v, window, softmax_scale, alibi_slopes, rel_bias, sink_tokens, cu_seqlens = inputs
    ctx.save_for_backward(q, k, v, *output, alibi_slopes, rel_bias, cu_seqlens)
    ctx.args = (window, softmax_scale, sink_tokens)


def _swa_backward(ctx, do, dlse):
    q, k, v, o, lse, alibi_slopes, rel_bias, cu_seqlens = ctx.saved_tensors
    window, softmax_scale, sink_tokens = ctx.args
    dq, dk, dv, drel = sliding_window_attention_backward(
        do, q, k, v, o, lse, window, softmax_scale, alibi_slopes, rel_bias, sink_tokens, cu_seqlens
    )
    return dq, dk, dv, None, None, None, (None if rel_bias is None else drel), None, None


sliding_window_attention.register_autograd(_swa_backward, setup_context=_swa_setup)


# ---- gated linear units, differentiable ------------------------------------------------------------------------


@torch.library.custom_op("fastllm::glu", mutates_args=())
def glu(gate: Tensor, up: Tensor, activation: str) -> Tensor:
    return _dispatch.pick("glu", gate.device, _glu_ref)(gate, up, activation).contiguous()


@glu.register_fake
def _(gate, up, activation):
    return gate.new_empty(gate.shape)


@torch.library.custom_op("fastllm::glu_backward", mutates_args=())
def glu_backward(grad: Tensor, gate: Tensor, up: Tensor, activation: str) -> tuple[Tensor, Tensor]:
    dgate, dup = _dispatch.pick("glu_backward", gate.device, _glu_bwd_ref)(grad, gate, up, activation)
    return dgate.contiguous(), dup.contiguous()


@glu_backward.register_fake
def _(grad, gate, up, activation):
    return gate.new_empty(gate.shape), up.new_empty(up.shape)


def _glu_setup(ctx, inputs, output):
    gate, up, activation = inputs
    ctx.save_for_backward(gate, up)
    ctx.activation = activation


def _glu_backward(ctx, grad):
    gate, up = ctx.saved_tensors
    dgate, dup = glu_backward(grad, gate, up, ctx.activation)
    return dgate, dup, None


glu.register_autograd(_glu_backward, setup_context=_glu_setup)


@torch.library.custom_op("fastllm::glu_packed", mutates_args=())
def glu_packed(x: Tensor, activation: str, gate_first: bool) -> Tensor:
    impl = _dispatch.pick("glu_packed", x.device, _glu_packed_ref)
    return impl(x, activation, gate_first=gate_first).contiguous()


@glu_packed.register_fake
def _(x, activation, gate_first):
    return x.new_empty(*x.shape[:-1], x.shape[-1] // 2)


def _glu_packed_setup(ctx, inputs, output):
    x, activation, gate_first = inputs
    ctx.save_for_backward(x)
    ctx.args = (activation, gate_first)


@torch.library.custom_op("fastllm::glu_packed_backward", mutates_args=())
def glu_packed_backward(grad: Tensor, x: Tensor, activation: str, gate_first: bool) -> Tensor:
    impl = _dispatch.pick("glu_packed_backward", x.device, _glu_packed_bwd_ref)
    return impl(grad, x, activation, gate_first=gate_first).contiguous()


@glu_packed_backward.register_fake
def _(grad, x, activation, gate_first):
    return x.new_empty(x.shape)


def _glu_packed_backward(ctx, grad):
    (x,) = ctx.saved_tensors
    return glu_packed_backward(grad, x, *ctx.args), None, None


glu_packed.register_autograd(_glu_packed_backward, setup_context=_glu_packed_setup)


# ---- projection + GLU in one matmul (an inference kernel; its backward recomputes the projection) ----------------


@torch.library.custom_op("fastllm::glu_linear", mutates_args=())
def glu_linear(x: Tensor, w_gate_up: Tensor, bias: Tensor | None, activation: str, gate_first: bool) -> Tensor:
    impl = _dispatch.pick("glu_linear", x.device, _glu_linear_ref)
    return impl(x, w_gate_up, activation, gate_first=gate_first, bias=bias).contiguous()


@glu_linear.register_fake
def _(x, w_gate_up, bias, activation, gate_first):
    return x.new_empty(*x.shape[:-1], w_gate_up.shape[0] // 2)


def _glu_linear_setup(ctx, inputs, output):
    x, w_gate_up, bias, activation, gate_first = inputs
    ctx.save_for_backward(x, w_gate_up, bias)
    ctx.args = (activation, gate_first)


def _glu_linear_backward(ctx, grad):
    """The backward of F.linear followed by glu_packed, with the (..., 2I) projection recomputed in eager torch."""
    x, w, bias = ctx.saved_tensors
    dh = glu_packed_backward(grad, torch.nn.functional.linear(x, w, bias), *ctx.args)  # (..., 2I)
    dh2 = dh.reshape(-1, dh.shape[-1])  # (M, 2I)
    need_x, need_w, need_b = ctx.needs_input_grad[:3]
    dx = dh @ w if need_x else None  # (..., K)
    dw = dh2.T @ x.reshape(-1, x.shape[-1]) if need_w else None  # (2I, K)
    db = dh2.sum(0) if need_b else None  # (2I,)
    return dx, dw, db, None, None


glu_linear.register_autograd(_glu_linear_backward, setup_context=_glu_linear_setup)
