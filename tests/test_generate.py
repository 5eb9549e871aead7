"""fastllm.engine and fastllm.generate: cached generation against full recompute for every preset, batching, EOS and
stop strings, streaming, seeds, the sampler hook, the repetition penalty and the context policy.

Models are the presets shrunk to tiny dims with weights perturbed away from init (as in test_models.py); text tests
use a small BPE trained here and an lm_head bias that keeps the random model on printable ASCII tokens.
"""

import importlib
import types

import pytest
import torch

import fastllm
import fastllm.kernels as K
from fastllm import engine
from fastllm.engine import SamplingParams, context_length
from fastllm.models import PRESETS, ModelConfig, Transformer
from fastllm.text import TextStream

TINY = dict(n_layer=2, d_model=32, n_head=4, d_ff=48, vocab_size=97, max_seq_len=64)
MLA = dict(n_layer=3, kv_lora_rank=12, qk_nope_head_dim=8, qk_rope_head_dim=4, v_head_dim=6)
INL = dict(embed_rank=8, inl_iterations=3, inl_group_size=8)
GREEDY = SamplingParams(temperature=0)
CORPUS = "the cat sat on the mat. the dog ate the bone. a bird sang in the tree. " * 40


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matmuls: one thread avoids oversubscription stalls on loaded machines
    torch.manual_seed(0)
    yield
    torch.set_num_threads(n)


def tiny_model(name, **overrides):
    preset = PRESETS[name]
    kw = dict(TINY)
    if preset.get("rel_bias"):
        kw["rel_bias"] = 6
    if "mla" in preset.get("layer_pattern", ()):
        kw.update(MLA)
    if preset.get("block") == "inl":
        kw.update(INL)
    model = Transformer(ModelConfig.from_name(name, **{**kw, **overrides})).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))  # away from init: norms != 1, biases != 0
    return model


@torch.no_grad()
def reference(model, prompt, n, *, max_length=None, keep=None, penalty=1.0):
    """Greedy by re-running the full forward on the row's context every step, with the documented context policy
    (ctx tokens at most; when exceeded, keep the last `keep`) and an HF repetition penalty over the whole row."""
    ctx = context_length(model.config, max_length)
    keep = keep or (ctx // 2 if ctx else None)
    seq = list(prompt)
    start = 0 if ctx is None else max(0, len(seq) - ctx)
    for _ in range(n):
        logits = model(torch.tensor([seq[start:]]))[0, -1].double()
        seen = torch.tensor(sorted(set(seq)))
        logits[seen] = torch.where(logits[seen] > 0, logits[seen] / penalty, logits[seen] * penalty)
        seq.append(int(logits.argmax()))
        if ctx is not None and len(seq) - start > ctx:
            start = len(seq) - keep
    return seq[len(prompt) :]


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_greedy_cached_equals_full_recompute_every_preset(name):
    model = tiny_model(name)
    prompts = [torch.randint(0, 97, (n,)).tolist() for n in (5, 9)]  # different lengths: prefilled row by row
    out, stats = engine.generate(model, prompts, 20, sampling=GREEDY)
    assert out == [reference(model, p, 20) for p in prompts]
    assert stats.new_tokens == 40 and stats.prompt_tokens == 14 and stats.slides == 0


@pytest.mark.parametrize(
    "name, kw",
    [
        ("llm-scratch-v2", dict(attention="sliding", window=5, sink_tokens=2)),  # rings only: never slides
        ("swa-mla-262m", dict(layer_pattern=("sliding", "sliding", "mla"), window=4, sink_tokens=1)),
        ("llm-scratch-v1", dict(attention="sliding", window=4, max_seq_len=24)),  # learned positions: slides
    ],
)
def test_sliding_window_rings_wrap(name, kw):
    model = tiny_model(name, **kw)
    prompts = [torch.randint(0, 97, (n,)).tolist() for n in (3, 11)]
    out, stats = engine.generate(model, prompts, 40, sampling=GREEDY)
    assert out == [reference(model, p, 40) for p in prompts]
    ring = model.new_cache(1, 1000, max_chunk=1).layers[0].k.shape[1]
    assert ring == kw["window"] + kw.get("sink_tokens", 0)  # a sliding layer's cache never grows
    assert (stats.slides > 0) == ("max_seq_len" in kw)  # 11 + 40 tokens pass 24 learned positions, not 64


@pytest.mark.parametrize("prompt_len, new", [(1, 1), (2, 2), (3, 1)])
def test_short_generations_with_more_sinks_than_cache_slots(prompt_len, new):
    # The cache holds only prompt + new - 1 tokens, fewer than the 4 sink slots of the sliding layers.
    model = tiny_model("swa-mla-262m", layer_pattern=("sliding", "sliding", "mla"), window=6, sink_tokens=4)
    prompt = torch.randint(0, 97, (prompt_len,)).tolist()
    out, _ = engine.generate(model, [prompt], new, sampling=GREEDY)
    assert out == [reference(model, prompt, new)]


@pytest.mark.parametrize(
    "name, max_length, keep", [("gpt2", None, None), ("llm-scratch-v2", 10, None), ("swa-mla-262m", 12, 3)]
)
def test_context_slides_and_reprefills(name, max_length, keep):
    # full attention (learned positions cap gpt2 at max_seq_len=16; the others at max_length): the context is cut to
    # its last `keep` tokens (default ctx // 2) and re-prefilled; prompts longer than ctx keep their last ctx tokens
    model = tiny_model(name, max_seq_len=16 if name == "gpt2" else 64)
    ctx = context_length(model.config, max_length)
    prompts = [torch.randint(0, 97, (n,)).tolist() for n in (4, ctx + 5)]
    out, stats = engine.generate(model, prompts, 30, sampling=GREEDY, max_length=max_length, keep=keep)
    assert out == [reference(model, p, 30, max_length=max_length, keep=keep) for p in prompts]
    k = keep or ctx // 2
    # row 0 first fills ctx, then slides every ctx - k + 1 tokens; row 1 starts full
    want = [(4 + 29 - ctx) // (ctx - k + 1) + 1, 29 // (ctx - k + 1) + 1]
    assert stats.slides == sum(want)


def test_compiled_decode_step_matches_eager():
    # the hot step under torch.compile(fullgraph=True) (aot_eager here: no C++ toolchain needed), slides included
    model = tiny_model("swa-mla-262m", layer_pattern=("sliding", "sliding", "mla"), window=4, sink_tokens=1)
    prompts = [torch.randint(0, 97, (n,)).tolist() for n in (5, 11)]
    eager, _ = engine.generate(model, prompts, 24, sampling=GREEDY, max_length=16)
    compiled, stats = engine.generate(model, prompts, 24, sampling=GREEDY, max_length=16, compile="aot_eager")
    assert compiled == eager and stats.slides > 0


def test_frozen_cpu_compile_matches_eager_and_sees_weight_changes():
    # compile=True on the CPU: inductor max-autotune with the weights frozen into the compiled step (C++ GEMMs)
    model = tiny_model("llm-scratch-v2")
    prompts = [torch.randint(0, 97, (n,)).tolist() for n in (3, 7)]
    eager, _ = engine.generate(model, prompts, 12, sampling=GREEDY)
    compiled, _ = engine.generate(model, prompts, 12, sampling=GREEDY, compile=True)
    assert compiled == eager
    with torch.no_grad():
        model.lm_head.weight.mul_(-1.0)  # frozen constants would keep the old head: the step must recompile
    eager, _ = engine.generate(model, prompts, 12, sampling=GREEDY)
    compiled, _ = engine.generate(model, prompts, 12, sampling=GREEDY, compile=True)
    assert compiled == eager


def test_context_length_rules():
    gpt2 = ModelConfig.from_name("gpt2", **TINY)
    assert context_length(gpt2) == 64 and context_length(gpt2, 1000) == 64 and context_length(gpt2, 20) == 20
    rope = ModelConfig.from_name("llm-scratch-v2", **TINY)
    assert context_length(rope, 1000) == 1000  # computed positions: the caller's cap
    swa = ModelConfig.from_name("llm-scratch-v2", **TINY, attention="sliding", window=8)
    assert context_length(swa) is None and context_length(swa, 10) is None


def test_batch_equals_each_row_alone_when_sampling():
    model = tiny_model("llm-scratch-v2")
    prompts = [torch.randint(0, 97, (n,)).tolist() for n in (2, 7, 4)]
    sampling = SamplingParams(temperature=0.0, repetition_penalty=1.3)
    batched, _ = engine.generate(model, prompts, 15, sampling=sampling)
    assert batched == [engine.generate(model, [p], 15, sampling=sampling)[0][0] for p in prompts]
    assert batched == [reference(model, p, 15, penalty=1.3) for p in prompts]  # HF penalty over prompt + new


def test_eos_stops_each_row_and_pads_tensor_output():
    model = tiny_model("gpt2")
    prompts = torch.randint(0, 97, (2, 6))
    free = [reference(model, p, 12) for p in prompts.tolist()]
    eos = free[0][3]  # row 0 emits it at step 3; row 1 may or may not
    out, _ = engine.generate(model, prompts.tolist(), 12, sampling=GREEDY, eos_ids=[eos])
    for row, f in zip(out, free):
        cut = f.index(eos) + 1 if eos in f else len(f)
        assert row == f[:cut]
    ids = fastllm.generate(model, None, prompts, 12, temperature=0, eos_id=eos)
    assert ids.shape == (2, 6 + max(len(r) for r in out))
    assert torch.equal(ids[:, :6], prompts)
    assert ids[0, 6:].tolist() == out[0] + [eos] * (ids.shape[1] - 6 - len(out[0]))  # keeps padding with EOS


def test_all_rows_done_stops_early():
    model = tiny_model("gpt2")
    prompts = torch.randint(0, 97, (2, 5)).tolist()
    free = [reference(model, p, 30) for p in prompts]
    eos = [free[0][2], free[1][2]]
    out, stats = engine.generate(model, prompts, 30, sampling=GREEDY, eos_ids=eos, sync_every=4)
    assert all(len(r) <= 3 for r in out) and stats.new_tokens == sum(len(r) for r in out)


@pytest.mark.parametrize("enabled_before", [True, False])
def test_decode_loop_pauses_the_garbage_collector(enabled_before):
    import gc

    model = tiny_model("gpt2")
    seen = []

    def on_step(i, ids):
        seen.append(gc.isenabled())
        if i == 3:
            raise KeyboardInterrupt  # the caller's interrupt: the collector's state is restored on the way out

    (gc.enable if enabled_before else gc.disable)()
    try:
        free, _ = engine.generate(
            model, [[1, 2, 3]], 3, sampling=GREEDY, on_step=lambda i, ids: seen.append(gc.isenabled())
        )
        assert seen == [False] * 3 and gc.isenabled() == enabled_before
        assert free[0] == reference(model, [1, 2, 3], 3)
        seen.clear()
        with pytest.raises(KeyboardInterrupt):
            engine.generate(model, [[1, 2, 3]], 8, sampling=GREEDY, on_step=on_step)
        assert seen == [False] * 4 and gc.isenabled() == enabled_before
    finally:
        gc.enable()


def test_sampling_goes_through_kernels_sample(monkeypatch):
    calls = []
    real = K.sample

    def counting(logits, **kw):
        prev = kw["prev_tokens"]
        calls.append(dict(kw, prev_tokens=None if prev is None else prev.clone()))  # the engine's buffer grows on
        return real(logits, **kw)

    monkeypatch.setattr(K, "sample", counting)
    model = tiny_model("l1")
    prompts = [[5, 6, 7], [8]]
    engine.generate(model, prompts, 6, sampling=SamplingParams(0.7, 5, 0.9, 0.05, 1.2))
    assert len(calls) == 6
    kw = calls[-1]
    params = (kw["temperature"], kw["top_k"], kw["top_p"], kw["min_p"], kw["repetition_penalty"])
    assert params == (0.7, 5, 0.9, 0.05, 1.2)
    prev = kw["prev_tokens"]
    assert prev[0, :3].tolist() == [5, 6, 7] and prev[1, 0] == 8  # the prompt is part of the penalised history
    assert (prev[1, 1:6] >= 0).all() and (prev[1, 6:] == -1).all()  # the new tokens, then padding
    calls.clear()
    engine.generate(model, prompts, 3, sampling=SamplingParams(temperature=1.0))
    assert len(calls) == 3 and calls[0]["prev_tokens"] is None  # no penalty: no history to scan


def test_seeded_sampling_is_reproducible():
    model = tiny_model("swa-mla-262m")
    ids = torch.randint(0, 97, (3, 4))

    def run(seed):
        return fastllm.generate(model, None, ids, 16, temperature=1.0, top_k=20, top_p=0.95, seed=seed)

    a, b, c = run(7), run(7), run(8)
    assert torch.equal(a, b) and not torch.equal(a, c)


# ---- text: tokenizer, stop strings, streaming -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def text_model():
    torch.manual_seed(1)
    tok = fastllm.train_bpe([CORPUS], 300, special_tokens=["<|endoftext|>"])
    cfg = ModelConfig.from_name("llm-scratch-v2", **{**TINY, "vocab_size": tok.vocab_size}, lm_head_bias=True)
    model = Transformer(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
        printable = torch.zeros(tok.vocab_size, dtype=torch.bool)
        for i in range(tok.vocab_size):
            s = tok.decode_bytes([i])
            printable[i] = s.isascii() and s.decode().isprintable() and i != tok.eot_token
        model.lm_head.bias.masked_fill_(~printable, -1e4)  # random weights, readable ASCII text
    return model, tok


def test_text_generation_stop_strings_and_streaming(text_model):
    model, tok = text_model
    prompts = ["the cat", "a bird sang in"]
    free = fastllm.generate(model, tok, prompts, 30, temperature=0)
    ids = [tok.encode(p) for p in prompts]
    assert free == [tok.decode(reference(model, r, 30)) for r in ids]
    stop = free[0][10:13]  # a string the first row produces: its text ends right before it
    pieces = {0: [], 1: []}
    out = fastllm.generate(
        model, tok, prompts, 30, temperature=0, stop=[stop, "zzzz"], stream=lambda b, p: pieces[b].append(p)
    )
    assert out[0] == free[0][: free[0].index(stop)]
    assert out[1] == (free[1][: free[1].index(stop)] if stop in free[1] else free[1])
    assert ["".join(pieces[b]) for b in (0, 1)] == out  # the stream is exactly the returned text
    # sampled, with a repetition penalty: streamed text still equals the completions
    pieces = {0: [], 1: []}
    kw = dict(temperature=1.0, repetition_penalty=1.2, seed=3)
    out = fastllm.generate(model, tok, prompts, 25, stream=lambda b, p: pieces[b].append(p), **kw)
    assert ["".join(pieces[b]) for b in (0, 1)] == out
    assert out == fastllm.generate(model, tok, prompts, 25, **kw)


def test_text_stream_utf8_and_held_stop_prefix():
    tok = fastllm.train_bpe([CORPUS], 280)
    text = "naïve café, 日本語 text — done."
    ids = tok.encode(text)
    assert len(ids) > len(text.encode()) // 2  # multi-byte characters are split across byte tokens
    ts = TextStream(tok)
    pieces = [ts.push(i) for i in ids] + [ts.flush()]
    assert "".join(pieces) == text and not any("\ufffd" in p for p in pieces)
    ts = TextStream(tok, ["日本語 t", "xyz"])
    pieces = [ts.push(i) for i in ids]
    assert ts.stopped and ts.text == "naïve café, " and "".join(pieces) == ts.text
    # a possible stop start is held, then released when it turns out not to be one
    ts = TextStream(tok, ["café!"])
    out = "".join(ts.push(i) for i in ids) + ts.flush()
    assert out == text and not ts.stopped


def test_public_api_shapes_and_errors(text_model):
    model, tok = text_model
    module = importlib.import_module("fastllm.generate")  # `fastllm.generate` names the module and the function:
    assert isinstance(module, types.ModuleType)  # once the module is imported, the package attribute may be it
    assert module(model, tok, ["the"], 2, temperature=0) == fastllm.generate(model, tok, ["the"], 2, temperature=0)
    (empty,) = fastllm.generate(model, tok, [""], 3, temperature=0)  # starts from <|endoftext|>
    assert isinstance(empty, str)
    for kw, msg in (
        (dict(top_p=0.0), "top_p"),
        (dict(top_p=1.5), "top_p"),
        (dict(temperature=-1.0), "temperature"),
        (dict(top_k=-2), "top_k"),
        (dict(repetition_penalty=0.0), "repetition_penalty"),
    ):
        with pytest.raises(ValueError, match=msg):
            fastllm.generate(model, tok, ["the"], 3, **kw)
    with pytest.raises(ValueError, match="max_new_tokens"):
        fastllm.generate(model, tok, ["the"], 0)
    with pytest.raises(ValueError, match="stop strings need a tokenizer"):
        fastllm.generate(model, None, torch.tensor([[1, 2]]), 3, stop=["a"])
    with pytest.raises(ValueError, match="list of str"):
        fastllm.generate(model, tok, "the", 3)
