"""torch.library registrations of the inference-only ops (no autograd): decode attention over caches, sampling,
and the linears (int8, W8A8, float row-major and packed).

They are defined through torch.library.Library rather than custom_op: a decode step makes ~70 such calls per token,
and custom_op's Python dispatch costs 10-50 us a call against ~2 us here (measured on the CPU). As in `_ops.py`,
each real implementation asks `_dispatch` for the backend at call time, CPU calls of the ops that have a C++ kernel
go to `fastllm.kernels.cpu`, and outputs are freshly allocated contiguous tensors.
"""

import functools
from collections.abc import Callable

import torch
from torch import Tensor

from fastllm.kernels import _dispatch
from fastllm.kernels import cpu as _cpu
from fastllm.kernels._ops import _window
from fastllm.kernels.reference import sampling as _sampling_ref
from fastllm.kernels.reference.attention import swa_decode as _swa_decode_ref
from fastllm.kernels.reference.linear import grouped_linear as _grouped_linear_ref
from fastllm.kernels.reference.linear import int8_linear as _int8_linear_ref
from fastllm.kernels.reference.linear import int8_linear_w8a8 as _w8a8_linear_ref
from fastllm.kernels.reference.linear import linear_packed as _linear_packed_ref
from fastllm.kernels.reference.linear import packed_layout as _packed_layout
from fastllm.kernels.reference.mla import mla_decode as _mla_decode_ref
from fastllm.kernels.reference.sampling import sample_from_noise as _sample_ref
from fastllm.kernels.reference.sampling import sample_philox as _sample_philox_ref

_lib = torch.library.Library("fastllm", "FRAGMENT")
FAKES: dict[str, Callable] = {}  # op name -> its fake, also registered for fastllm_cpu::<name> (kernels/cpu/native.py)


def _inference_op(schema: str, impl: Callable, fake: Callable, cpu: Callable | None = None):
    """Defines `fastllm::<schema>` with `impl` for every device (`cpu`, when given, for CPU tensors) and its fake
    (shapes and dtypes for torch.compile); returns the op."""
    name = schema.split("(", 1)[0]
    _lib.define(schema)
    _lib.impl(name, impl, "CompositeExplicitAutograd")
    if cpu is not None:
        _lib.impl(name, cpu, "CPU")
    torch.library.register_fake("fastllm::" + name)(fake)
    FAKES[name] = fake
    return getattr(torch.ops.fastllm, name)


# ---- decode ops (inference only) ---------------------------------------------------------------------------------


def _swa_decode(q, k_cache, v_cache, cache_seqlens, window, softmax_scale, sink_tokens, alibi_slopes, rel_bias):
    impl = _dispatch.pick("swa_decode", q.device, _swa_decode_ref)
    return impl(
        q,
        k_cache,
        v_cache,
        cache_seqlens,
        _window(window),
        softmax_scale=softmax_scale,
        sink_tokens=sink_tokens,
        alibi_slopes=alibi_slopes,
        rel_bias=rel_bias,
    ).contiguous()


def _swa_decode_cpu(q, k_cache, v_cache, cache_seqlens, window, softmax_scale, sink_tokens, alibi_slopes, rel_bias):
    args = (q, k_cache, v_cache, cache_seqlens, window, softmax_scale, sink_tokens, alibi_slopes, rel_bias)
    if not (_cpu.supports_attention(q) and _dispatch.use_cpu_kernel("swa_decode", q.device)):
        return _swa_decode(*args)
    return _cpu.swa_decode(*args[:4], _window(window), *args[5:])  # the C++ kernel (fp32, bf16)


def _swa_decode_fake(q, k_cache, v_cache, cache_seqlens, window, softmax_scale, sink_tokens, alibi_slopes, rel_bias):
    return q.new_empty(*q.shape[:-1], v_cache.shape[-1])


swa_decode = _inference_op(
    "swa_decode(Tensor q, Tensor k_cache, Tensor v_cache, Tensor cache_seqlens, int window, float softmax_scale, "
    "int sink_tokens, Tensor? alibi_slopes, Tensor? rel_bias) -> Tensor",
    _swa_decode,
    _swa_decode_fake,
    cpu=_swa_decode_cpu,
)


def _mla_decode(q, kv_cache, cache_seqlens, kv_lora_rank, softmax_scale, block_table):
    impl = _dispatch.pick("mla_decode", q.device, _mla_decode_ref)
    o, lse = impl(
        q, kv_cache, cache_seqlens, kv_lora_rank=kv_lora_rank, softmax_scale=softmax_scale, block_table=block_table
    )
    return o.contiguous(), lse.contiguous()


def _mla_decode_fake(q, kv_cache, cache_seqlens, kv_lora_rank, softmax_scale, block_table):
    B, Tq, H, _ = q.shape
    return q.new_empty(B, Tq, H, kv_lora_rank), q.new_empty(B, Tq, H, dtype=torch.float32)


def _mla_decode_cpu(q, kv_cache, cache_seqlens, kv_lora_rank, softmax_scale, block_table):
    args = (q, kv_cache, cache_seqlens, kv_lora_rank, softmax_scale, block_table)
    if not (_cpu.supports_attention(q) and _dispatch.use_cpu_kernel("mla_decode", q.device)):
        return _mla_decode(*args)
    return _cpu.mla_decode(*args)  # the C++ decode attention kernel, one kv head (fp32, bf16)


mla_decode = _inference_op(
    "mla_decode(Tensor q, Tensor kv_cache, Tensor cache_seqlens, int kv_lora_rank, float softmax_scale, "
    "Tensor? block_table) -> (Tensor, Tensor)",
    _mla_decode,
    _mla_decode_fake,
    cpu=_mla_decode_cpu,
)


# ---- sampling: the randomness is an input (noise or seeds) because custom ops cannot take a torch.Generator -------
# nan_flag, an int32 (1,) tensor or None, is where the Triton kernel ORs its error bits instead of raising (no host
# sync); with None the launcher checks its own flag once per call. The references raise and never write it.


_SAMPLE_PARAMS = "Tensor temperature, Tensor top_k, Tensor top_p, Tensor min_p, Tensor repetition_penalty, "
_SAMPLE_TAIL = "Tensor? prev_tokens, Tensor(a!)? nan_flag=None) -> Tensor"


def _greedy_cpu(op, logits, temperature, top_k, top_p, min_p, repetition_penalty, prev_tokens):
    """The ids of a CPU call in which every row is greedy, through the C++ argmax (torch's is ~10x slower on the
    CPU); None for any other call. Same checks and errors as the reference, whose ids it equals."""
    device = logits.device
    if not (_cpu.supports_greedy(logits) and _dispatch.use_cpu_kernel(op, device)):
        return None
    if not bool((temperature == 0).all()):
        return None
    params = (temperature, top_k, top_p, min_p, repetition_penalty, prev_tokens)
    rows = zip(top_k.tolist(), top_p.tolist(), min_p.tolist(), repetition_penalty.tolist())  # B is a batch size
    valid = all(k >= 0 and 0 <= p <= 1 and 0 <= m <= 1 and r > 0 for k, p, m, r in rows)
    if prev_tokens is not None or not valid:  # the reference's checks (they raise), and its penalty
        _sampling_ref._check_fast(logits, *params)
        if prev_tokens is not None and not bool((repetition_penalty == 1).all()):  # a penalty of 1 changes no bit
            logits = _sampling_ref.apply_repetition_penalty(logits.float(), prev_tokens, repetition_penalty)
    ids, flags = _cpu.greedy(logits)
    if flags:  # NaN, +inf or a row of -inf: the reference's error
        _sampling_ref._check(logits, *params)
        raise ValueError("sample: the repetition penalty took a logit to inf")  # huge logit / tiny penalty
    return ids


def plain_greedy_cpu(logits: Tensor) -> Tensor | None:
    """The ids of a `sample` call that is greedy with every other parameter at its default (no filters, no penalty,
    no noise or seed) on CPU logits the C++ argmax takes: straight from it, without the op's per-row parameter
    tensors and checks (~150 us a token at GPT-2's vocabulary, ~3% of an int8 decode step). None for any other call,
    and for logits holding NaN, +inf or only -inf: the op then raises the reference's error."""
    if torch.compiler.is_compiling() or not _cpu.supports_greedy(logits):
        return None
    if not _dispatch.use_cpu_kernel("sample_philox", logits.device):
        return None
    ids, flags = _cpu.greedy(logits)
    return None if flags else ids


def _sample_from_noise(logits, noise, temperature, top_k, top_p, min_p, repetition_penalty, prev_tokens, nan_flag=None):
    params = (temperature, top_k, top_p, min_p, repetition_penalty, prev_tokens)
    ids = _greedy_cpu("sample_from_noise", logits, *params)
    if ids is not None:
        return ids
    impl = _dispatch.pick("sample_from_noise", logits.device, _sample_ref)
    return impl(logits, noise, temperature, top_k, top_p, min_p, repetition_penalty, prev_tokens, nan_flag).contiguous()


def _sample_philox(logits, seed, temperature, top_k, top_p, min_p, repetition_penalty, prev_tokens, nan_flag=None):
    ids = _greedy_cpu("sample_philox", logits, temperature, top_k, top_p, min_p, repetition_penalty, prev_tokens)
    if ids is not None:
        return ids
    impl = _dispatch.pick("sample_philox", logits.device, _sample_philox_ref)
    return impl(logits, seed, temperature, top_k, top_p, min_p, repetition_penalty, prev_tokens, nan_flag).contiguous()


def _sample_fake(logits, randomness, temperature, top_k, top_p, min_p, repetition_penalty, prev_tokens, nan_flag=None):
    return logits.new_empty(logits.shape[0], dtype=torch.int64)


sample_from_noise = _inference_op(
    "sample_from_noise(Tensor logits, Tensor noise, " + _SAMPLE_PARAMS + _SAMPLE_TAIL, _sample_from_noise, _sample_fake
)
sample_philox = _inference_op(
    "sample_philox(Tensor logits, Tensor seed, " + _SAMPLE_PARAMS + _SAMPLE_TAIL, _sample_philox, _sample_fake
)


# ---- int8 linears, weight-only and W8A8 (inference only: no autograd) -------------------------------------------


def _packed_linear_op(name: str, reference: Callable, quantize_x: bool):
    """fastllm::<name>(x, packed, scale, bias): the C++ kernel for decode-sized CPU calls, `reference` otherwise."""

    def any_device(x: Tensor, packed: Tensor, scale: Tensor, bias: Tensor | None) -> Tensor:
        return reference(x, packed, scale, bias).contiguous()

    def cpu(x: Tensor, packed: Tensor, scale: Tensor, bias: Tensor | None) -> Tensor:
        if (
            x.numel() <= _cpu.MAX_M_PACKED * x.shape[-1]
            and x.dtype in _cpu.X_DTYPES
            and (quantize_x or packed.dtype != torch.uint8)  # the "vnni" layout is W8A8's only
            and _dispatch.use_cpu_kernel(name, x.device)
        ):
            return _cpu.linear_int8_packed(x, packed, scale, bias, quantize_x)
        return any_device(x, packed, scale, bias)

    def fake(x, packed, scale, bias):
        return x.new_empty(*x.shape[:-1], scale.shape[0])

    schema = f"{name}(Tensor x, Tensor packed, Tensor scale, Tensor? bias) -> Tensor"
    return _inference_op(schema, any_device, fake, cpu=cpu)


int8_linear = _packed_linear_op("int8_linear", _int8_linear_ref, quantize_x=False)
w8a8_linear = _packed_linear_op("w8a8_linear", _w8a8_linear_ref, quantize_x=True)


# ---- linear with float weights: the C++ GEMV for decode-sized CPU calls, F.linear otherwise (no autograd) -------


@functools.cache
def _slow_bf16_gemm() -> bool:
    """Whether torch has no fast bf16 GEMM on this CPU (oneDNN's needs AVX-512: on AVX2-only CPUs a bf16 matmul runs
    a portable loop, 488 ms for (512, 1024) x (1024, 5632) on a Zen 3, against 94 ms converting to fp32 first)."""
    try:
        return not torch.ops.mkldnn._is_mkldnn_bf16_supported()
    except (AttributeError, RuntimeError):  # a torch without the query: keep its bf16 matmul
        return False


def _linear_cpu(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    if _cpu.supports(x, weight) and _dispatch.use_cpu_kernel("linear", x.device):
        return _cpu.linear(x, weight, bias)
    if x.dtype == weight.dtype == torch.bfloat16 and _slow_bf16_gemm():
        # Prefill-sized bf16 calls there: in fp32, rounded once (the op's contract: accumulated in fp32).
        b = None if bias is None else bias.float()
        return torch.nn.functional.linear(x.float(), weight.float(), b).to(torch.bfloat16)
    return torch.nn.functional.linear(x, weight, bias)


def _linear_fake(x, weight, bias):
    return x.new_empty(*x.shape[:-1], weight.shape[0])


linear = _inference_op(
    "linear(Tensor x, Tensor weight, Tensor? bias) -> Tensor", torch.nn.functional.linear, _linear_fake, cpu=_linear_cpu
)


def _grouped_linear(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    return _grouped_linear_ref(x, weight, bias).contiguous()


def _grouped_linear_cpu(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    if (
        x.dim() >= 2
        and x.shape[-2] > 0
        and x.shape[-1] > 0
        and x.numel() <= _cpu.MAX_M * x.shape[-2] * x.shape[-1]
        and x.dtype in _cpu.X_DTYPES
        and _dispatch.use_cpu_kernel("grouped_linear", x.device)
    ):
        return _cpu.grouped_linear(x, weight, bias)
    return _grouped_linear(x, weight, bias)


def _grouped_linear_fake(x, weight, bias):
    return x.new_empty(*x.shape[:-1], weight.shape[1])


grouped_linear = _inference_op(
    "grouped_linear(Tensor x, Tensor weight, Tensor? bias) -> Tensor",
    _grouped_linear,
    _grouped_linear_fake,
    cpu=_grouped_linear_cpu,
)


def _linear_packed(x: Tensor, packed: Tensor, bias: Tensor | None, out_features: int) -> Tensor:
    return _linear_packed_ref(x, packed, bias, out_features).contiguous()


def _linear_packed_cpu(x: Tensor, packed: Tensor, bias: Tensor | None, out_features: int) -> Tensor:
    if (
        x.numel() <= _cpu.MAX_M_PACKED * x.shape[-1]
        and x.dtype in _cpu.X_DTYPES
        and (x.dtype == torch.bfloat16 or _packed_layout(packed) == "tiles")  # "vnni2": bf16 only, else the reference
        and _dispatch.use_cpu_kernel("linear_packed", x.device)
    ):
        return _cpu.linear_packed(x, packed, bias, out_features)
    return _linear_packed(x, packed, bias, out_features)


linear_packed = _inference_op(
    "linear_packed(Tensor x, Tensor packed, Tensor? bias, int out_features) -> Tensor",
    _linear_packed,
    lambda x, packed, bias, out_features: x.new_empty(*x.shape[:-1], out_features),
    cpu=_linear_packed_cpu,
)
