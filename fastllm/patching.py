"""Run fastllm's kernels inside Hugging Face `transformers` models: `fastllm.patch(model)`, `fastllm.unpatch(model)`.

    >>> model = AutoModelForCausalLM.from_pretrained("Qwen/Qwen2.5-0.5B")
    >>> report = fastllm.patch(model)              # or fastllm.patch_qwen2(model, sampling=True)
    >>> print(report)                              # what now runs on fastllm.kernels, and what was left alone
    >>> fastllm.unpatch(model)                     # back to exactly what it was

Patching works on one model instance (never on the transformers classes), for Llama, Mistral, Qwen2 and GPT-2
(transformers >= 5). How each part hooks in:

- attention: fastllm registers an attention function and a mask builder under the name "fastllm" in transformers'
  `AttentionInterface` and `AttentionMaskInterface` (once, at import), and `model.set_attn_implementation("fastllm")`
  points this instance's config at them. The attention modules keep their own projections, RoPE and KV cache: they
  hand over q (B, H, T, D) already rotated and k, v (B, Hkv, S, D) without `repeat_kv`, and `_attention` runs
  `fastllm.kernels.sliding_window_attention` with the layer's `sliding_window` (Mistral, and Qwen2's sliding layers)
  and scaling. transformers' window convention is fastllm's: a window of W keeps `kv_idx > q_idx - W`, i.e. W keys
  counting the query's own (flash-attn window_size=(W - 1, 0)).
- mlp: the `forward` of each gated MLP instance (Llama, Mistral, Qwen2: `down_proj(act(gate_proj(x)) * up_proj(x))`)
  is replaced, on the instance, by one that computes `act(gate) * up` with `fastllm.kernels.glu`. GPT-2's MLP is
  not gated (c_fc, tanh-GELU, c_proj) and fastllm has no kernel for a lone GELU, so it stays as it is.
- sampling (opt-in): `model.generate` is wrapped on the instance; with do_sample it draws every token with
  `fastllm.kernels.sample` (temperature, top-k, top-p, min-p and repetition penalty in one kernel) through a final
  logits processor that leaves only the drawn token finite, while transformers' own warpers and repetition penalty
  are neutralised so that nothing is applied twice.

What the patched attention does with masks:
- no mask, or a mask without padding: causal (+ sliding window) attention, prefill and cached decode (DynamicCache,
  including its sliding-window layers: queries are the last T of the S keys);
- padding (left or right, one contiguous run of real tokens per row) without a cache, e.g. a padded training batch or
  a prefill: the rows are packed into one with `cu_seqlens`, so real tokens never see padding. Outputs at padded
  positions are not comparable with transformers' (nobody should read them).

What it refuses, with an error that says why: an architecture other than the four; a head dim above 256 (the
Triton kernels' limit); attention dropout while training; `output_attentions` (no attention weights are ever
materialised; GPT-2 drops the flag before its attention layers, and returns no weights, as with sdpa); GPT-2
cross-attention; an MLP activation other than SiLU/GELU; padding during cached decoding (the
decode path has no key mask: generate with one prompt, or prompts of equal length); StaticCache (its keys are a
preallocated, partly empty buffer); packed sequences signalled by position_ids and custom mask functions; and, in
`generate` with sampling, beam search and the warpers fastllm does not implement (typical_p, epsilon/eta cutoff,
top_h). Under torch.compile, masks are not inspected: packed position_ids are not detected there, and a mask given
with a KV cache is refused (it cannot be checked for padding).
"""

from __future__ import annotations

import copy
import os
import sys
import types
from dataclasses import dataclass, field

import torch

import fastllm.kernels as K


def _import_transformers():
    """Import transformers with a source checkout's root off sys.path.

    Run from the root of a fastllm checkout (`python -m ...` puts the working directory first on sys.path), the
    top-level `kernels/` folder (installed as `fastllm.kernels`) would shadow Hugging Face's `kernels` package, which
    transformers imports when it is installed.
    """
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    saved = sys.path[:]
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != root]
    try:
        import transformers  # noqa: F401
        import transformers.masking_utils  # noqa: F401
    finally:
        sys.path[:] = saved


try:
    _import_transformers()
    import transformers
    from transformers import AttentionInterface, LogitsProcessor, LogitsProcessorList, PreTrainedModel
    from transformers.masking_utils import AttentionMaskInterface
except ImportError as e:  # transformers is optional for fastllm itself
    raise ImportError(f"fastllm.patch needs Hugging Face transformers >= 5 ({e})") from e

if int(transformers.__version__.split(".")[0]) < 5:
    raise ImportError(f"fastllm.patch needs transformers >= 5; found {transformers.__version__}")

IMPLEMENTATION = "fastllm"  # the attention implementation name registered with transformers
MAX_HEAD_DIM = 256  # the Triton attention kernels' limit (kernels/triton/attention.py)
# config.model_type -> (class name of its attention modules, of its gated MLP modules or None)
ARCHITECTURES = {
    "llama": ("LlamaAttention", "LlamaMLP"),
    "mistral": ("MistralAttention", "MistralMLP"),
    "qwen2": ("Qwen2Attention", "Qwen2MLP"),
    "gpt2": ("GPT2Attention", None),
}
# transformers' hidden_act names -> fastllm.kernels.glu activations (gelu_new and gelu_fast are tanh-GELU written out)
GLU_ACTIVATIONS = {
    "silu": "silu",
    "swish": "silu",
    "gelu": "gelu",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_new": "gelu_tanh",
    "gelu_fast": "gelu_tanh",
}
# transformers' global generation defaults for the parameters fastllm's sampler takes over
_SAMPLING_DEFAULTS = {"temperature": 1.0, "top_k": 50, "top_p": 1.0, "min_p": 0.0, "repetition_penalty": 1.0}
# what generate gets instead, so that transformers' own warpers and penalty leave the logits alone
_NEUTRAL = {"temperature": 1.0, "top_k": 0, "top_p": 1.0, "min_p": None, "repetition_penalty": 1.0}
# sampling warpers fastllm.kernels.sample does not implement, with the value that disables each
_UNSUPPORTED_WARPERS = {"typical_p": 1.0, "epsilon_cutoff": 0.0, "eta_cutoff": 0.0, "top_h": None}
_NO_WEIGHTS = "fastllm.patch: output_attentions needs attention weights, which fastllm's attention never forms"


@dataclass
class PatchReport:
    """What `patch` swapped in one model. Module names are as in `model.named_modules()`."""

    architecture: str
    attention: list[str] = field(default_factory=list)  # attention modules now running sliding_window_attention
    mlp: list[str] = field(default_factory=list)  # MLP modules now running fastllm.kernels.glu
    sampling: bool = False  # model.generate samples with fastllm.kernels.sample
    skipped: dict[str, str] = field(default_factory=dict)  # part asked for -> why it was left as it was

    def __str__(self) -> str:
        lines = [f"fastllm.patch ({self.architecture}):"]
        lines.append(f"  attention: {len(self.attention)} modules -> fastllm.kernels.sliding_window_attention")
        lines.append(f"  mlp: {len(self.mlp)} modules -> fastllm.kernels.glu")
        lines.append(f"  sampling: {'fastllm.kernels.sample' if self.sampling else 'unchanged'}")
        lines += [f"  not patched: {part}: {why}" for part, why in self.skipped.items()]
        return "\n".join(lines)


@dataclass
class _PatchState:
    """Kept on the model as `_fastllm_patch`: the report and what `unpatch` puts back. Saved methods are bound
    methods, which a deep copy rebinds, so a copy of a patched model unpatches its own modules."""

    report: PatchReport
    attn_implementation: str | None = None  # the config's implementation before patching (None: not patched)
    # (module name, attribute, the module's own previous value or None when it came from the class)
    replaced: list[tuple[str, str, object]] = field(default_factory=list)


# ---- public API ---------------------------------------------------------------------------------------------------


def patch(model, *, attention: bool = True, mlp: bool = True, sampling: bool = False) -> PatchReport:
    """Swaps fastllm's kernels into a transformers Llama, Mistral, Qwen2 or GPT-2 model instance (any head: CausalLM,
    the base model, ...). Patching again first undoes the previous patch, so it is idempotent.

    Args:
        attention: run attention through `fastllm.kernels.sliding_window_attention` (via the attention interface).
        mlp: run the gated MLPs' `act(gate) * up` through `fastllm.kernels.glu`.
        sampling: make `model.generate(do_sample=True)` draw tokens with `fastllm.kernels.sample`.

    Returns a `PatchReport`. Raises ValueError (or TypeError for a non-transformers model) for what it cannot honour;
    the model is left unchanged then.
    """
    if not isinstance(model, PreTrainedModel):
        raise TypeError(
            f"fastllm.patch: expected a transformers PreTrainedModel, got {type(model).__name__} (patch the model "
            "before wrapping it in DDP/FSDP or torch.compile)"
        )
    arch = model.config.model_type
    if arch not in ARCHITECTURES:
        raise ValueError(f"fastllm.patch: unsupported architecture {arch!r}; supported: {', '.join(ARCHITECTURES)}")
    report = PatchReport(architecture=arch)
    if attention:
        _check_attention(model, arch)
    mlp_modules = _mlp_modules(model, arch, report) if mlp else []
    if sampling and not hasattr(model, "generate"):
        raise ValueError(f"fastllm.patch: {type(model).__name__} has no generate(); sampling=True needs a LM head")

    unpatch(model)
    state = _PatchState(report)
    if attention:
        state.attn_implementation = model.config._attn_implementation
        model.set_attn_implementation(IMPLEMENTATION)
        if model.config._attn_implementation != IMPLEMENTATION:
            raise ValueError(f"fastllm.patch: {type(model).__name__} does not let its attention be swapped")
        cls = ARCHITECTURES[arch][0]
        report.attention = [name for name, m in model.named_modules() if type(m).__name__ == cls]
    for name, module in mlp_modules:
        _replace(state, name, module, "forward", _glu_mlp_forward)
        report.mlp.append(name)
    if sampling:
        _replace(state, "", model, "generate", _generate_with_fastllm_sampling)
        report.sampling = True
    model._fastllm_patch = state
    return report


def unpatch(model) -> PatchReport | None:
    """Restores what `patch` changed (attention implementation, MLP forwards, generate). Returns the report of the
    patch it undid, or None if the model was not patched."""
    state = model.__dict__.get("_fastllm_patch")
    if state is None:
        return None
    if state.attn_implementation is not None:
        model.set_attn_implementation(state.attn_implementation)
    modules = dict(model.named_modules())
    for name, attr, previous in state.replaced:
        if previous is None:
            vars(modules[name]).pop(attr)  # the class's method shows through again
        else:
            setattr(modules[name], attr, previous)
    del model._fastllm_patch
    return state.report


def patch_llama(model, **kwargs) -> PatchReport:
    """`patch` for a Llama model; refuses any other architecture. Same keyword arguments."""
    return _patch_arch(model, "llama", kwargs)


def patch_mistral(model, **kwargs) -> PatchReport:
    """`patch` for a Mistral model (its config's sliding_window is honoured); refuses any other architecture."""
    return _patch_arch(model, "mistral", kwargs)


def patch_qwen2(model, **kwargs) -> PatchReport:
    """`patch` for a Qwen2 model (sliding layers per use_sliding_window / max_window_layers / layer_types)."""
    return _patch_arch(model, "qwen2", kwargs)


def patch_gpt2(model, **kwargs) -> PatchReport:
    """`patch` for a GPT-2 model: attention only (its MLP is not gated); refuses any other architecture."""
    return _patch_arch(model, "gpt2", kwargs)


def _patch_arch(model, arch: str, kwargs: dict) -> PatchReport:
    found = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
    if found != arch:
        hint = f"fastllm.patch_{found}" if found in ARCHITECTURES else "fastllm.patch to see what is supported"
        raise ValueError(f"fastllm.patch_{arch}: got a {found!r} model; use {hint}")
    return patch(model, **kwargs)


def _replace(state: _PatchState, name: str, module, attr: str, fn) -> None:
    """Binds `fn` as `module.<attr>` on the instance, remembering what unpatch puts back."""
    state.replaced.append((name, attr, vars(module).get(attr)))
    setattr(module, attr, types.MethodType(fn, module))


# ---- what can be patched -------------------------------------------------------------------------------------------


def _check_attention(model, arch: str) -> None:
    cfg = model.config
    if arch == "gpt2":
        head_dim, dropout = cfg.hidden_size // cfg.num_attention_heads, cfg.attn_pdrop
        if cfg.add_cross_attention:
            raise ValueError("fastllm.patch: GPT-2 with cross-attention is not supported (the kernel is causal only)")
    else:
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        dropout = cfg.attention_dropout
    if head_dim > MAX_HEAD_DIM:
        raise ValueError(f"fastllm.patch: head_dim={head_dim} exceeds the attention kernels' {MAX_HEAD_DIM}")
    if model.training and dropout > 0:
        raise ValueError(_dropout_message(dropout))
    if cfg.output_attentions:
        raise ValueError(_NO_WEIGHTS)


def _dropout_message(p: float) -> str:
    return (
        f"fastllm.patch: attention dropout {p} while training is not supported by fastllm's attention; set the "
        "config's attention dropout (attention_dropout, GPT-2: attn_pdrop) to 0, or call model.eval()"
    )


def _mlp_modules(model, arch: str, report: PatchReport) -> list[tuple[str, torch.nn.Module]]:
    cls = ARCHITECTURES[arch][1]
    if cls is None:
        report.skipped["mlp"] = "GPT-2's MLP is not gated (c_fc, tanh-GELU, c_proj); fastllm has no kernel for it"
        return []
    act = model.config.hidden_act
    if act not in GLU_ACTIVATIONS:
        raise ValueError(
            f"fastllm.patch: MLP activation {act!r} is not one of fastllm.kernels.glu's ({', '.join(GLU_ACTIVATIONS)});"
            " pass mlp=False to patch attention only"
        )
    return [(name, m) for name, m in model.named_modules() if type(m).__name__ == cls]


# ---- the swapped-in pieces -----------------------------------------------------------------------------------------


def _glu_mlp_forward(self, x: torch.Tensor) -> torch.Tensor:
    """Replaces Llama/Mistral/Qwen2 MLP.forward: down_proj(act(gate_proj(x)) * up_proj(x)), the GLU in one kernel."""
    return self.down_proj(K.glu(self.gate_proj(x), self.up_proj(x), GLU_ACTIVATIONS[self.config.hidden_act]))


def _attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, sliding_window=None, **kwargs):
    """transformers attention function: q (B, H, T, D) rotated, k and v (B, Hkv, S, D) -> (o (B, T, H, D), None).

    attention_mask is what `_mask` built: None, or a (B, S) bool padding mask with T == S (packed via cu_seqlens).
    """
    if dropout > 0:
        raise ValueError(_dropout_message(dropout))
    if kwargs.get("output_attentions"):
        raise ValueError(_NO_WEIGHTS)
    q, k, v = query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2)  # (B, T, H, D), (B, S, Hkv, D)
    if attention_mask is None:
        return K.sliding_window_attention(q, k, v, sliding_window, softmax_scale=scaling), None
    B, T, H, _ = q.shape
    if attention_mask.dim() != 2 or attention_mask.shape != (B, k.shape[1]) or k.shape[1] != T:
        raise ValueError(
            f"fastllm.patch: attention_mask {tuple(attention_mask.shape)} is not supported for q {tuple(q.shape)} and "
            f"k {tuple(k.shape)}; fastllm's attention takes a 2-D padding mask without a KV cache"
        )
    flat = [x.reshape(1, B * T, *x.shape[2:]) for x in (q, k, v)]  # (1, B T, heads, D): rows become documents
    o = K.sliding_window_attention(
        *flat, sliding_window, softmax_scale=scaling, cu_seqlens=_cu_seqlens_of_padding(attention_mask)
    )  # (1, B T, H, Dv)
    return o.view(B, T, H, -1), None


def _cu_seqlens_of_padding(mask: torch.Tensor) -> torch.Tensor:
    """(3 B + 1,) int32 document boundaries for a (B, T) mask whose rows are [pad, real, pad] runs: each row becomes
    three documents (leading padding, the real tokens, trailing padding), empty ones allowed. No host sync."""
    B, T = mask.shape
    n = mask.sum(1)  # (B,) real tokens per row
    start = mask.int().argmax(1)  # (B,) first real token (0 for an empty row, where n = 0)
    base = torch.arange(B, device=mask.device) * T  # (B,)
    cuts = torch.stack([base + start, base + start + n, base + T], dim=1).flatten()  # (3 B,)
    return torch.cat([cuts.new_zeros(1), cuts]).to(torch.int32)


def _mask(
    batch_size,
    q_length,
    kv_length,
    q_offset=0,
    kv_offset=0,
    mask_function=None,
    attention_mask=None,
    allow_is_causal_skip=True,
    use_vmap=False,
    **kwargs,
):
    """transformers mask builder for "fastllm": returns None (plain causal / sliding attention: the layer knows its
    window) or the (B, T) bool padding mask that `_attention` turns into cu_seqlens; refuses what neither covers."""
    if torch.is_tensor(q_offset) or q_offset + q_length != kv_offset + kv_length:
        raise ValueError(
            "fastllm.patch: the queries are not the last keys of the cache (a StaticCache?); fastllm's attention "
            "aligns queries to the end of the keys: use the default DynamicCache"
        )
    compiling = torch.compiler.is_compiling()
    if use_vmap or (not allow_is_causal_skip and not compiling):
        raise ValueError(
            "fastllm.patch: this call needs a custom attention mask (packed sequences via position_ids, or an extra "
            "mask function); fastllm's attention does causal + sliding window + padding only"
        )
    if attention_mask is None:
        return None
    if compiling:
        if q_length != kv_length:
            raise ValueError(
                "fastllm.patch: under torch.compile an attention_mask with a KV cache cannot be checked for padding; "
                "pass attention_mask=None"
            )
        return attention_mask
    if bool(attention_mask.all()):
        return None
    if q_length != kv_length:
        raise ValueError(
            "fastllm.patch: padding in a cached decoding step is not supported (fastllm's decode attention has no key "
            "mask); generate with one prompt or prompts of equal length"
        )
    starts = attention_mask[:, 1:] & ~attention_mask[:, :-1]  # (B, T - 1) a run of real tokens starts here
    if bool((starts.sum(1) + attention_mask[:, 0] > 1).any()):
        raise ValueError("fastllm.patch: each row's attention_mask must be one run of real tokens (left/right padding)")
    return attention_mask


class _FastllmSampler(LogitsProcessor):
    """The last logits processor of a patched generate: draws the next token with fastllm.kernels.sample and returns
    scores that are 0 there and -inf elsewhere, so that transformers' own pick (multinomial or argmax) takes it."""

    def __init__(self, temperature, top_k, top_p, min_p, repetition_penalty):
        self.params = dict(
            temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p, repetition_penalty=repetition_penalty
        )

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        ids = K.sample(scores, prev_tokens=input_ids, **self.params)  # (B,)
        return torch.full_like(scores, float("-inf")).scatter_(1, ids[:, None], 0.0)


def _generate_with_fastllm_sampling(self, *args, **kwargs):
    """Replaces model.generate: with do_sample, transformers' sampling parameters go to fastllm.kernels.sample."""
    previous = next(p for name, attr, p in self._fastllm_patch.replaced if attr == "generate")
    original = previous or types.MethodType(type(self).generate, self)
    base = kwargs.get("generation_config") or self.generation_config

    def setting(name, default):
        value = kwargs.get(name, getattr(base, name, None))
        if value is None and base is not self.generation_config:
            value = getattr(self.generation_config, name, None)
        return default if value is None else value

    if not setting("do_sample", False):
        return original(*args, **kwargs)
    if setting("num_beams", 1) > 1:
        raise ValueError("fastllm.patch(sampling=True): beam search is not supported; use num_beams=1")
    for name, off in _UNSUPPORTED_WARPERS.items():
        if setting(name, off) != off:
            raise ValueError(f"fastllm.patch(sampling=True): {name} is not supported by fastllm.kernels.sample")
    sampler = _FastllmSampler(**{name: setting(name, d) for name, d in _SAMPLING_DEFAULTS.items()})
    if kwargs.get("generation_config") is not None:
        kwargs["generation_config"] = config = copy.deepcopy(kwargs["generation_config"])
        for name, value in _NEUTRAL.items():
            setattr(config, name, value)
            kwargs.pop(name, None)
    else:
        kwargs.update(_NEUTRAL)
    kwargs["logits_processor"] = LogitsProcessorList([*(kwargs.get("logits_processor") or []), sampler])
    return original(*args, **kwargs)


AttentionInterface.register(IMPLEMENTATION, _attention)
AttentionMaskInterface.register(IMPLEMENTATION, _mask)
