"""fastllm.patch on tiny random transformers models (Llama, Mistral with a window shorter than the sequence, Qwen2 with
one full and one sliding layer, GPT-2): same logits, gradients and training curves as the unpatched model, through the
reference kernels and through the Triton kernels under the interpreter; what is refused; unpatch; sampling.

Models: 2 layers, hidden 64, 4 query heads over 2 kv heads (GPT-2: 4 heads), weights drawn with std 0.2 so that
attention is far from uniform (a window off by one changes the logits by ~1, not 1e-6). fp32 throughout: the patched
model must match to fp32 rounding (DESIGN.md's tight fp32 rule; the kernels accumulate in another order than SDPA).
"""

import copy

import pytest
import torch
import torch.nn.functional as F
from transformers import (
    DynamicCache,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    OPTConfig,
    OPTForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    StaticCache,
)

import fastllm
import fastllm.kernels as K

V, T, WINDOW = 101, 40, 8
GATED = dict(
    vocab_size=V,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    initializer_range=0.2,
    pad_token_id=V - 1,
    bos_token_id=None,
    eos_token_id=None,
)
ATOL = dict(atol=5e-5, rtol=1e-5)  # logits are O(5); fp32 rounding of two summation orders


def make(arch: str, **overrides):
    """A tiny random model in eval mode, the same weights for the same arch."""
    torch.manual_seed(0)
    if arch == "llama":
        return LlamaForCausalLM(LlamaConfig(**GATED, **overrides)).eval()
    if arch == "mistral":
        return MistralForCausalLM(MistralConfig(**GATED, sliding_window=WINDOW, **overrides)).eval()
    if arch == "qwen2":  # layer 0 full, layer 1 sliding (layers >= max_window_layers slide)
        cfg = Qwen2Config(**GATED, use_sliding_window=True, sliding_window=WINDOW, max_window_layers=1, **overrides)
        assert cfg.layer_types == ["full_attention", "sliding_attention"]
        return Qwen2ForCausalLM(cfg).eval()
    cfg = dict(n_embd=64, n_layer=2, n_head=4, n_positions=64, initializer_range=0.2)
    cfg.update(attn_pdrop=0.0, resid_pdrop=0.0, embd_pdrop=0.0, bos_token_id=None, eos_token_id=None)
    return GPT2LMHeadModel(GPT2Config(vocab_size=V, **{**cfg, **overrides})).eval()


def pair(arch: str, **overrides):
    """(unpatched model, a patched deep copy of it, the report)."""
    ref = make(arch, **overrides)
    patched = copy.deepcopy(ref)  # its own config: patching one instance must not touch the other
    return ref, patched, fastllm.patch(patched)


def ids_and_labels(batch=2, length=T, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, V - 1, (batch, length), generator=g), torch.randint(0, V - 1, (batch, length), generator=g)


def padding_mask():
    mask = torch.ones(2, T, dtype=torch.long)
    mask[0, :5] = 0  # left padding
    mask[1, T - 7 :] = 0  # right padding
    return mask


def logits_and_grads(model, ids, labels, **kw):
    model.zero_grad(set_to_none=True)
    logits = model(ids, use_cache=False, **kw).logits  # (B, T, V)
    F.cross_entropy(logits.flatten(0, 1), labels.flatten()).backward()
    return logits.detach(), {n: p.grad for n, p in model.named_parameters()}


def assert_equivalent(ref, patched, *, with_padding=True):
    ids, labels = ids_and_labels()
    want, want_g = logits_and_grads(ref, ids, labels)
    got, got_g = logits_and_grads(patched, ids, labels)
    torch.testing.assert_close(got, want, **ATOL)
    for name, g in want_g.items():
        torch.testing.assert_close(got_g[name], g, atol=1e-5, rtol=1e-4, msg=name)
    if with_padding:  # rows packed with cu_seqlens; positions that are padding are not compared
        mask = padding_mask()
        with torch.no_grad():
            want = ref(ids, attention_mask=mask).logits
            got = patched(ids, attention_mask=mask).logits
        real = mask.bool()
        torch.testing.assert_close(got[real], want[real], **ATOL)


ARCHS = ["llama", "mistral", "qwen2", "gpt2"]


# ---- equivalence ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
def test_patched_matches_unpatched_reference_path(arch):
    ref, patched, report = pair(arch)
    assert report.architecture == arch and patched.config._attn_implementation == "fastllm"
    prefix = "transformer.h.{}.attn" if arch == "gpt2" else "model.layers.{}.self_attn"
    assert report.attention == [prefix.format(i) for i in range(2)]
    if arch == "gpt2":
        assert report.mlp == [] and "mlp" in report.skipped
    else:
        assert report.mlp == ["model.layers.0.mlp", "model.layers.1.mlp"] and not report.skipped
    assert ref.config._attn_implementation == "sdpa"  # the original instance is untouched
    assert_equivalent(ref, patched)


@pytest.mark.parametrize("arch", ARCHS)
def test_patched_matches_unpatched_triton_kernels(arch, monkeypatch):
    monkeypatch.setenv("FASTLLM_KERNELS", "auto")  # Triton (interpreted) where a kernel is registered
    cpu = torch.device("cpu")
    ops = ["sliding_window_attention", "sliding_window_attention_backward"]
    if arch != "gpt2":
        ops += ["glu", "glu_backward"]
    missing = [op for op in ops if K.backend_for(op, cpu) != "triton"]
    if missing:
        pytest.skip(f"no Triton kernel registered for {missing}: the auto path would run the reference")
    ref, patched, _ = pair(arch)
    assert_equivalent(ref, patched, with_padding=arch == "mistral")  # varlen (cu_seqlens) kernel path once


def test_sliding_windows_reach_the_kernel(monkeypatch):
    """Each layer's window as transformers defines it (W keys counting the query's own) is the kernel's window."""
    seen = []
    real = K.sliding_window_attention

    def spy(q, k, v, window=None, **kw):
        seen.append(window)
        return real(q, k, v, window, **kw)

    monkeypatch.setattr(K, "sliding_window_attention", spy)
    ids, _ = ids_and_labels(1, 12)
    for arch, windows in [("llama", [None, None]), ("mistral", [WINDOW] * 2), ("qwen2", [None, WINDOW])]:
        seen.clear()
        _, patched, _ = pair(arch)
        with torch.no_grad():
            patched(ids)
        assert seen == windows, arch


@pytest.mark.parametrize("arch", ARCHS)
def test_training_curves_match(arch):
    """20 AdamW steps over the same 4 batches: patched and unpatched losses agree step by step."""
    curves = []
    for patched in (False, True):
        model = make(arch).train()
        if patched:
            fastllm.patch(model)
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
        losses = []
        for step in range(20):
            ids, labels = ids_and_labels(2, 16, seed=100 + step % 4)
            loss = F.cross_entropy(model(ids, use_cache=False).logits.flatten(0, 1), labels.flatten())
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses.append(loss.item())
        curves.append(losses)
    unpatched, patched = curves
    assert patched[-1] < patched[0] - 0.5  # it learns (memorises the 4 batches)
    assert patched == pytest.approx(unpatched, rel=1e-4, abs=1e-5)


@pytest.mark.parametrize("arch", ["mistral", "qwen2"])
def test_cached_generation_matches(arch):
    """Greedy generate through the KV cache (DynamicCache; its sliding layers keep only the window) past the window."""
    ref, patched, _ = pair(arch)
    prompt, _ = ids_and_labels(2, 6)
    want = ref.generate(prompt, max_new_tokens=12, do_sample=False)
    got = patched.generate(prompt, max_new_tokens=12, do_sample=False)
    assert torch.equal(got, want)


# ---- refusals ------------------------------------------------------------------------------------------------------


def test_refuses_what_it_cannot_honour():
    with pytest.raises(TypeError, match="PreTrainedModel"):
        fastllm.patch(torch.nn.Linear(2, 2))
    opt = OPTForCausalLM(
        OPTConfig(vocab_size=V, hidden_size=16, num_hidden_layers=1, ffn_dim=32, num_attention_heads=2)
    )
    with pytest.raises(ValueError, match="unsupported architecture 'opt'"):
        fastllm.patch(opt)
    with pytest.raises(ValueError, match="patch_mistral"):
        fastllm.patch_llama(make("mistral"))
    with pytest.raises(ValueError, match="head_dim=512"):
        fastllm.patch(make("llama", head_dim=512))
    relu = make("llama", hidden_act="relu")
    with pytest.raises(ValueError, match="activation 'relu'"):
        fastllm.patch(relu)
    assert relu.config._attn_implementation == "sdpa" and "forward" not in vars(relu.model.layers[0].mlp)
    assert fastllm.patch(relu, mlp=False).attention  # attention alone is fine
    with pytest.raises(ValueError, match="cross-attention"):
        fastllm.patch(make("gpt2", add_cross_attention=True))
    with pytest.raises(ValueError, match="attention dropout 0.1"):
        fastllm.patch(make("gpt2", attn_pdrop=0.1).train())


def test_refuses_at_call_time():
    ids, _ = ids_and_labels(2, 10)
    gpt2 = make("gpt2", attn_pdrop=0.1)
    fastllm.patch(gpt2)  # eval mode: dropout is off
    gpt2(ids)
    with pytest.raises(ValueError, match="attention dropout"):
        gpt2.train()(ids)

    _, llama, _ = pair("llama")
    with pytest.raises(ValueError, match="output_attentions"):
        llama(ids, output_attentions=True)
    holes = torch.ones(2, 10, dtype=torch.long)
    holes[0, 4] = 0
    with pytest.raises(ValueError, match="one run of real tokens"):
        llama(ids, attention_mask=holes)
    packed = torch.cat([torch.arange(6), torch.arange(4)])[None].expand(2, 10)  # two documents per row
    with pytest.raises(ValueError, match="packed sequences"):
        llama(ids, position_ids=packed, use_cache=False)
    left = torch.ones(2, 10, dtype=torch.long)
    left[0, :3] = 0
    with pytest.raises(ValueError, match="padding in a cached decoding step"):
        llama.generate(ids, attention_mask=left, max_new_tokens=2, do_sample=False)
    static = StaticCache(config=llama.config, max_cache_len=32)
    with pytest.raises(ValueError, match="StaticCache"):
        llama(ids, past_key_values=static, use_cache=True)
    llama(ids, past_key_values=DynamicCache(config=llama.config), use_cache=True)  # the default cache is fine


# ---- unpatch, idempotence ------------------------------------------------------------------------------------------


def test_unpatch_restores_and_patching_twice_is_patching_once():
    ref, model, first = pair("qwen2")
    mlp = model.model.layers[0].mlp
    assert "forward" in vars(mlp)
    again = fastllm.patch(model)
    assert again == first and model.config._attn_implementation == "fastllm"
    twin = copy.deepcopy(model)  # a copy carries its own patch: unpatching it leaves `model` patched
    assert fastllm.unpatch(twin) == first and "forward" in vars(mlp)
    assert fastllm.unpatch(model) == first
    assert fastllm.unpatch(model) is None  # not patched any more: nothing to do
    assert model.config._attn_implementation == "sdpa" and "forward" not in vars(mlp)
    assert "generate" not in vars(model) and not hasattr(model, "_fastllm_patch")
    ids, _ = ids_and_labels(2, 12)
    with torch.no_grad():
        assert torch.equal(model(ids).logits, ref(ids).logits)  # the very same computation as before patching


# ---- sampling ------------------------------------------------------------------------------------------------------


def test_sampling_draws_with_fastllm_sample(monkeypatch):
    ref = make("llama")
    model = copy.deepcopy(ref)
    report = fastllm.patch(model, sampling=True)
    assert report.sampling
    calls = []
    real = K.sample

    def spy(logits, **kw):
        ids = real(logits, **kw)
        calls.append((kw, ids))
        return ids

    monkeypatch.setattr(K, "sample", spy)
    prompt, _ = ids_and_labels(2, 5)
    torch.manual_seed(3)
    out = model.generate(prompt, max_new_tokens=6, do_sample=True, temperature=0.7, top_k=20, top_p=0.9,
                         repetition_penalty=1.3)  # fmt: skip
    assert len(calls) == 6
    assert torch.equal(out[:, 5:], torch.stack([ids for _, ids in calls], dim=1))  # every new token is fastllm's draw
    kw = calls[-1][0]
    assert {k: kw[k] for k in ("temperature", "top_k", "top_p", "min_p", "repetition_penalty")} == dict(
        temperature=0.7, top_k=20, top_p=0.9, min_p=0.0, repetition_penalty=1.3
    )
    assert torch.equal(kw["prev_tokens"], out[:, :-1])  # the penalty sees the prompt and the tokens so far

    calls.clear()
    greedy = ref.generate(prompt, max_new_tokens=6, do_sample=False)
    assert torch.equal(model.generate(prompt, max_new_tokens=6, do_sample=True, top_k=1), greedy)
    assert torch.equal(model.generate(prompt, max_new_tokens=6, do_sample=False), greedy) and len(calls) == 6
    with pytest.raises(ValueError, match="typical_p"):
        model.generate(prompt, max_new_tokens=2, do_sample=True, typical_p=0.5)
    with pytest.raises(ValueError, match="beam search"):
        model.generate(prompt, max_new_tokens=2, do_sample=True, num_beams=2)
    fastllm.unpatch(model)
    assert "generate" not in vars(model)
