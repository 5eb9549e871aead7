"""torch.compile(fullgraph=True) of fastllm's own Transformer and of a patched transformers model: forward and backward
trace without graph breaks (fullgraph raises on any) with the eager, aot_eager and inductor backends on CPU, and
give the eager model's outputs and gradients.

fastllm.kernels are torch.library custom ops with fake implementations, so they enter the graph as single nodes.
Inductor compiles C++ on CPU (tens of seconds per graph): it runs on one fastllm model and one patched model.
"""

import copy

import pytest
import torch
import torch.nn.functional as F
from transformers import MistralConfig, MistralForCausalLM

import fastllm
from fastllm.models import ModelConfig, Transformer

TINY = dict(n_layer=2, d_model=32, n_head=4, d_ff=48, vocab_size=97, max_seq_len=64)
FAMILIES = {
    "gpt2": {},  # learned positions, LayerNorm, tanh-GELU MLP, full attention
    "llm-scratch-v1": dict(rel_bias=6),  # clipped relative bias (a differentiable kernel input), separate GLU
    "swa-mla-262m": dict(  # sliding window with sinks, MLA prefill, packed [up | gate] GLU
        n_layer=3,
        layer_pattern=["sliding", "sliding", "mla"],
        window=5,
        sink_tokens=2,
        kv_lora_rank=8,
        qk_nope_head_dim=8,
        qk_rope_head_dim=4,
        v_head_dim=8,
    ),
    "inl-1b": dict(embed_rank=8, inl_iterations=3, inl_group_size=8),  # the integrator block (train mode)
}
BACKENDS = ["eager", "aot_eager", "inductor"]
INDUCTOR_CASES = {"swa-mla-262m", "mistral"}  # inductor compiles C++: one of each kind


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def outputs_and_grads(fn, model, *args, **kwargs):
    out = fn(*args, **kwargs)
    logits = out if torch.is_tensor(out) else out.logits  # (B, T, V)
    loss = F.cross_entropy(logits.flatten(0, 1).float(), torch.arange(logits.shape[0] * logits.shape[1]) % 97)
    return logits.detach(), torch.autograd.grad(loss, [p for p in model.parameters() if p.requires_grad])


def assert_compiled_matches(model, backend, *args, **kwargs):
    want, want_g = outputs_and_grads(model, model, *args, **kwargs)
    compiled = torch.compile(model, fullgraph=True, backend=backend)  # a graph break raises
    got, got_g = outputs_and_grads(compiled, model, *args, **kwargs)
    tol = dict(atol=1e-5, rtol=1e-5) if backend == "inductor" else dict(atol=1e-6, rtol=0)
    torch.testing.assert_close(got, want, **tol)
    for a, b in zip(got_g, want_g):
        torch.testing.assert_close(a, b, atol=10 * tol["atol"], rtol=10 * tol["rtol"])


def cases(names):
    return [(n, b) for n in names for b in BACKENDS if b != "inductor" or n in INDUCTOR_CASES]


@pytest.mark.parametrize("family, backend", cases(FAMILIES))
def test_fastllm_transformer_compiles_fullgraph(family, backend):
    torch.manual_seed(0)
    model = Transformer(ModelConfig.from_name(family, **{**TINY, **FAMILIES[family]})).train()
    assert_compiled_matches(model, backend, torch.randint(0, 97, (2, 12)))


def patched_mistral():
    torch.manual_seed(0)
    cfg = MistralConfig(
        vocab_size=97,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        sliding_window=8,
        initializer_range=0.2,
    )
    model = MistralForCausalLM(cfg).eval()
    report = fastllm.patch(model)
    assert report.attention and report.mlp
    return model


@pytest.mark.parametrize("family, backend", cases(["mistral"]))
def test_patched_transformers_model_compiles_fullgraph(family, backend):
    model = patched_mistral()
    ids = torch.randint(0, 96, (2, 20))
    assert_compiled_matches(model, backend, ids)  # the default call: transformers makes a DynamicCache
    if backend == "aot_eager":  # a padded batch: the packed (cu_seqlens) path traces too
        mask = torch.ones(2, 20, dtype=torch.long)
        mask[0, :3] = 0
        ref = copy.deepcopy(model)
        fastllm.unpatch(ref)
        compiled = torch.compile(model, fullgraph=True, backend=backend)
        with torch.no_grad():
            got = compiled(ids, attention_mask=mask, use_cache=False).logits
            want = ref(ids, attention_mask=mask, use_cache=False).logits
        torch.testing.assert_close(got[mask.bool()], want[mask.bool()], atol=5e-5, rtol=1e-5)
