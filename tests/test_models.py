"""fastllm.models: presets, the cached forward against full recompute, rows of different lengths, torch.compile.

Every preset is shrunk to tiny dims (2 layers, d=32) and its weights perturbed away from init; "sliding" variants
use a window of 5 with 0 or 2 sink tokens and rings small enough to wrap several times during decoding.
"""

import math

import pytest
import torch
import torch.nn.functional as F

from fastllm.models import PRESETS, ModelConfig, Transformer
from fastllm.models.layers import apply_rope, rope_cos_sin, sinusoidal_positions

FAMILY_PRESETS = ["gpt2", "gpt2-medium", "gpt-124m", "l1", "llm-scratch-v1", "llm-scratch-v2"]
TINY = dict(n_layer=2, d_model=32, n_head=4, d_ff=48, vocab_size=97, max_seq_len=64)


@pytest.fixture(autouse=True)
def _one_thread():
    # tiny matmuls: one thread avoids oversubscription stalls on loaded CI machines (10 ms -> 0.1 ms per op)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(n)


def tiny_model(name, **overrides):
    cfg = ModelConfig.from_name(
        name, **{**TINY, **({"rel_bias": 6} if PRESETS[name].get("rel_bias") else {}), **overrides}
    )
    model = Transformer(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))  # away from init: norms != 1, biases != 0, rel_bias != 0
    return model


@torch.no_grad()
def greedy_full(model, ids, n):
    for _ in range(n):
        ids = torch.cat([ids, model(ids)[:, -1].argmax(-1, keepdim=True)], dim=1)
    return ids


@torch.no_grad()
def greedy_cached(model, ids, n, *, max_chunk=8):
    cache = model.new_cache(ids.shape[0], ids.shape[1] + n, max_chunk=max_chunk)
    nxt = model(ids, cache, last_only=True)[:, -1].argmax(-1, keepdim=True)
    out = [ids, nxt]
    for _ in range(n - 1):
        nxt = model(nxt, cache)[:, -1].argmax(-1, keepdim=True)
        out.append(nxt)
    return torch.cat(out, dim=1)


def test_presets_build_and_match_documented_sizes():
    # parameter counts from SEEDS.md (gpt2 124M tied; GPT-124M 163M untied; L1 155.8M; llm-scratch base 50.2M, of
    # which fastllm drops the 128 never-used negative-distance rows of each layer's (257, 8) relative-bias table)
    expected = {
        "gpt2": 124_439_808,
        "gpt2-medium": 354_823_168,
        "gpt-124m": 163_009_536,
        "l1": 155_856_896,
        "llm-scratch-v1": 50_176_320 - 8 * 128 * 8,
    }
    for name, n in expected.items():
        with torch.device("meta"):
            assert Transformer(ModelConfig.from_name(name)).num_params() == n, name
    assert set(FAMILY_PRESETS) <= set(PRESETS)
    with pytest.raises(ValueError, match="unknown preset"):
        ModelConfig.from_name("nope")
    with pytest.raises(ValueError, match="window"):
        ModelConfig.from_name("gpt2", attention="sliding")
    cfg = ModelConfig.from_name("llm-scratch-v2", layer_pattern=("sliding", "full"), window=4, n_layer=5)
    assert cfg.layer_kinds() == ["sliding", "full", "sliding", "full", "sliding"]
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("name", FAMILY_PRESETS)
@pytest.mark.parametrize("attn", ["full", "sliding0", "sliding2"])
def test_greedy_with_cache_equals_full_recompute(name, attn):
    kw = {} if attn == "full" else dict(attention="sliding", window=5, sink_tokens=int(attn[-1]))
    model = tiny_model(name, **kw)
    prompt = torch.randint(0, 97, (2, 7))
    want = greedy_full(model, prompt, 24)
    assert torch.equal(greedy_cached(model, prompt, 24, max_chunk=2), want)
    # a prompt longer than the ring (C = 5 + sinks + 2 - 1 slots): prefill keeps only the sinks and the tail
    long_prompt = torch.randint(0, 97, (1, 20))
    assert torch.equal(greedy_cached(model, long_prompt, 8, max_chunk=2), greedy_full(model, long_prompt, 8))


@pytest.mark.parametrize("name", ["llm-scratch-v1", "llm-scratch-v2"])
def test_rows_of_different_lengths_and_chunked_appends(name):
    model = tiny_model(name, attention="sliding", window=6, sink_tokens=1)
    prompts = [torch.randint(0, 97, (1, 5)), torch.randint(0, 97, (1, 11))]
    cache = model.new_cache(2, 64, max_chunk=3)
    with torch.no_grad():
        last = [model(p, cache.row(b))[:, -1] for b, p in enumerate(prompts)]  # prefill row by row
        assert cache.seqlens.tolist() == [5, 11] and not cache.fresh
        seqs = [p[0].tolist() for p in prompts]
        nxt = torch.stack(last).argmax(-1)  # (2, 1)
        for _ in range(9):  # batched decode, each row at its own position
            for b in range(2):
                seqs[b].append(int(nxt[b]))
            nxt = model(nxt, cache)[:, -1].argmax(-1, keepdim=True)
        for b in range(2):
            full = greedy_full(model, torch.tensor([seqs[b][: len(prompts[b][0])]]), 9)
            assert full[0].tolist() == seqs[b], b
        # a 10-token append to a non-fresh cache is split into chunks of max_chunk; logits equal full recompute
        extra = torch.randint(0, 97, (2, 10))
        got = model(extra, cache)
        for b in range(2):
            ids = torch.tensor([seqs[b] + extra[b].tolist()])  # the cache holds seqs[b]; nxt was never fed
            torch.testing.assert_close(got[b], model(ids)[0, -10:], atol=1e-5, rtol=0)


def test_cache_prefill_longer_than_full_cache_raises():
    model = tiny_model("gpt2")
    with pytest.raises(ValueError, match="does not fit"):
        model(torch.randint(0, 97, (1, 12)), model.new_cache(1, 10))
    with pytest.raises(ValueError, match="learned positions"):
        model(torch.randint(0, 97, (1, 65)))


def test_rope_and_sinusoidal_match_their_definitions():
    x = torch.randn(2, 5, 3, 8, dtype=torch.float64)
    pos = torch.arange(5)[None]
    cos, sin = rope_cos_sin(pos, 8, 10000.0)
    for style in ("half", "interleaved"):
        y = apply_rope(x.float(), cos, sin, style).double()
        for p in range(5):
            for i in range(4):
                a = p * 10000.0 ** (-2 * i / 8)
                j, k = (i, i + 4) if style == "half" else (2 * i, 2 * i + 1)
                want0 = x[:, p, :, j] * math.cos(a) - x[:, p, :, k] * math.sin(a)
                want1 = x[:, p, :, k] * math.cos(a) + x[:, p, :, j] * math.sin(a)
                torch.testing.assert_close(y[:, p, :, j], want0, atol=1e-5, rtol=0)
                torch.testing.assert_close(y[:, p, :, k], want1, atol=1e-5, rtol=0)
    pe = sinusoidal_positions(torch.arange(7)[None], 6)[0]
    i = torch.arange(3)
    torch.testing.assert_close(pe[4, 0::2], torch.sin(4 / 10000 ** (2 * i / 6)), atol=1e-6, rtol=0)
    torch.testing.assert_close(pe[4, 1::2], torch.cos(4 / 10000 ** (2 * i / 6)), atol=1e-6, rtol=0)


def test_partial_rope_gqa_sinusoidal_and_glu_layouts_run_cached():
    # combinations no seed preset uses, through the same cache path
    for kw in (
        dict(position="rope", rope_dim=4, n_kv_head=2, mlp="glu", glu_layout="gate_first", norm="rmsnorm"),
        dict(position="sinusoidal", mlp="glu", glu_activation="gelu_tanh", glu_layout="separate", n_kv_head=1),
        dict(position="none", attention="sliding", window=3, sink_tokens=1, qkv_bias=False, norm_bias=False),
    ):
        model = tiny_model("gpt2", **kw)
        prompt = torch.randint(0, 97, (2, 6))
        assert torch.equal(greedy_cached(model, prompt, 12, max_chunk=3), greedy_full(model, prompt, 12)), kw


def test_glu_layouts_agree_with_plain_torch():
    model = tiny_model("llm-scratch-v2")
    mlp = model.layers[0].mlp
    x = torch.randn(2, 3, 32)
    val, gate = mlp.w_in(x).chunk(2, dim=-1)
    torch.testing.assert_close(mlp(x), mlp.w_out(F.silu(gate) * val), atol=1e-6, rtol=0)


def test_torch_compile_fullgraph():
    model = tiny_model("llm-scratch-v2", attention="sliding", window=4, sink_tokens=1)
    ids = torch.randint(0, 97, (2, 9))
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        torch.testing.assert_close(compiled(ids), model(ids), atol=1e-6, rtol=0)
        # the decode step with a cache traces too (the generation engine compiles this one)
        cache, ref = model.new_cache(2, 32, max_chunk=2), model.new_cache(2, 32, max_chunk=2)
        model(ids, cache), model(ids, ref)
        for _ in range(3):
            x = torch.randint(0, 97, (2, 1))
            torch.testing.assert_close(compiled(x, cache), model(x, ref), atol=1e-6, rtol=0)
        assert cache.seqlens.tolist() == [12, 12]
