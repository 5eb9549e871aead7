"""End-to-end generation: fastllm's engine against transformers' `generate`, on the same GPT-2 124M weights.

The model is GPT-2 124M with random weights (transformers' init, nudged away from it so that greedy choices are
decisive), saved with `save_pretrained` and read back by `fastllm.load`. Greedy decoding, 128 new tokens.

- `test_generate_gpt2`: providers "fastllm" (eager decode step), "fastllm-compile" (the decode step under
  `torch.compile`, the inductor C++ backend on the CPU) and "transformers" (`generate(do_sample=False)`, dynamic
  cache), in fp32 and bf16, prompt 16 and 512, batch 1 and 8. Decode time per step is measured the same way for all:
  (time of a 128-token generate - time of a 1-token generate) / 127, so prefill is excluded. Equivalence first: in
  fp32 the greedy tokens must equal transformers' token for token; in bf16 the fraction that matches is recorded.
  extra_info: ms per decode step, tokens/s (batch x steps / time), and the bandwidth bound: weight bytes read per
  step / the memory bandwidth measured in the same session (`memory_bandwidth`), with the fraction of it reached.
- "fastllm-int8" and "fastllm-int8-compile": the same model after `fastllm.quant.quantize` (int8 weight-only
  linears, per-row scales, fastllm's C++ kernel); greedy tokens are compared with transformers' fp32 ones and the
  match fraction recorded (int8 weights change some choices). The bound counts the int8 bytes.
  "fastllm-w8a8-compile": `quantize(model, "w8a8")`, the activations quantized per row too (integer dot products
  on AVX-512 VNNI, what CTranslate2's int8 mode does), prompt 16 at batch 1 and 8, fp32 and bf16 activations (bf16:
  the KV cache, norms and residuals in bf16 too, half the cache bytes per step).
- `test_int8_perplexity`: the accuracy cost of int8 weights, as the perplexity change of the bundled model (trained
  on real English) on 16k tokens of the English and Python corpora: int8 weight-only, W8A8, W8A8 on bf16.
- `test_generate_swa_mla`: the SWA-MLA 262M preset (sliding-window and MLA layers, ring-buffer and latent caches),
  random weights, bf16, batch 1, prompt 512: ms per decode step for fastllm eager and compiled.

CTranslate2 and llama.cpp are not benchmarked here: they need their own model conversion and are outside the
project's dependencies; the issue tracker has their numbers on this machine kind for comparison.
Run with `pytest benches/bench_generate.py --benchmark`.
"""

import copy
import functools
import itertools
import math
import os
import statistics
import time

import pytest
import torch

import fastllm
from fastllm import engine
from fastllm.models import ModelConfig, Transformer
from fastllm.quant import quantize

NEW_TOKENS = 128
GREEDY = engine.SamplingParams(temperature=0)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
CASES = [  # (dtype, prompt length, batch)
    ("float32", 16, 1),
    ("float32", 512, 1),
    ("float32", 16, 8),
    ("bfloat16", 16, 1),
    ("bfloat16", 16, 8),
]
PROVIDERS = [
    "transformers",
    "fastllm",
    "fastllm-compile",
    "fastllm-int8",
    "fastllm-int8-compile",
    "fastllm-w8a8-compile",
]
INT8_CASES = [("float32", 16, 1), ("float32", 16, 8), ("bfloat16", 16, 1)]  # int8 providers run these
W8A8_CASES = [("float32", 16, 1), ("float32", 16, 8), ("bfloat16", 16, 1), ("bfloat16", 16, 8)]
_RESULTS: dict[tuple, dict] = {}  # case -> provider -> (ms per step, tokens)


@functools.lru_cache(maxsize=1)
def memory_bandwidth() -> float:
    """Read bandwidth in bytes/s: the best of a few sums over 512 MiB (all threads), well past any cache."""
    x = torch.ones(128 * 2**20, dtype=torch.float32)
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        x.sum()
        best = min(best, time.perf_counter() - t)
    return x.numel() * 4 / best


def weight_bytes(model: torch.nn.Module) -> int:
    """Bytes one decode step reads: every parameter and buffer (int8 codes and scales), except embedding tables that
    only serve lookups of a few rows; a table tied to the LM head is read whole by it and counts, once."""
    head = getattr(model.lm_head, "weight", None)
    seen, total = set(), 0
    for m in model.modules():
        for t in itertools.chain(m.parameters(recurse=False), m.buffers(recurse=False)):
            if id(t) in seen or (isinstance(m, torch.nn.Embedding) and t is not head):
                continue
            seen.add(id(t))
            total += t.numel() * t.element_size()
    return total


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    transformers = pytest.importorskip("transformers", reason="peer transformers is not installed")
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(bos_token_id=None, eos_token_id=None, pad_token_id=None)
    hf = transformers.GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(0.05 * torch.randn_like(p))  # decisive logits: greedy ties would make the comparison flaky
    path = tmp_path_factory.mktemp("gpt2-124m")
    hf.save_pretrained(path)
    return path


def prompts(n: int, batch: int) -> torch.Tensor:
    return torch.randint(0, 50257, (batch, n), generator=torch.Generator().manual_seed(n * 100 + batch))


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def runner(provider: str, path, dtype):
    """(generate(ids, n) -> (B, n) new ids, the model) for a provider."""
    if provider == "transformers":
        import transformers

        hf = transformers.GPT2LMHeadModel.from_pretrained(path, dtype=dtype).eval()

        def run(ids, n):
            kw = dict(max_new_tokens=n, min_new_tokens=n, do_sample=False, attention_mask=torch.ones_like(ids))
            with torch.no_grad():
                return hf.generate(ids, **kw)[:, ids.shape[1] :]

        return run, hf
    model, _ = fastllm.load(path)
    model = model.to(dtype).eval()
    if "int8" in provider or "w8a8" in provider:
        quantize(model, "w8a8" if "w8a8" in provider else "int8")
    compile_ = provider.endswith("-compile")

    def run(ids, n):
        out, _ = engine.generate(model, list(ids), n, sampling=GREEDY, compile=compile_)
        return torch.tensor(out)

    return run, model


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("dtype,prompt,batch", CASES)
def test_generate_gpt2(bench, gpt2_dir, dtype, prompt, batch, provider, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)  # the dispatch users get on a CPU: C++ kernels on
    monkeypatch.delenv("FASTLLM_KERNELS", raising=False)
    if "int8" in provider and (dtype, prompt, batch) not in INT8_CASES:
        pytest.skip("int8 providers run INT8_CASES only (suite time)")
    if "w8a8" in provider and (dtype, prompt, batch) not in W8A8_CASES:
        pytest.skip("the w8a8 provider runs W8A8_CASES only (suite time)")
    run, model = runner(provider, gpt2_dir, DTYPES[dtype])
    ids = prompts(prompt, batch)
    case = (dtype, prompt, batch)
    got = run(ids, NEW_TOKENS)  # warm-up (and compilation) + equivalence
    results = _RESULTS.setdefault(case, {})
    results[provider] = {"tokens": got}
    if "transformers" in results and provider != "transformers":
        want = results["transformers"]["tokens"]
        match = (got == want).double().mean().item()
        bench.extra_info["greedy_match"] = round(match, 4)
        if dtype == "float32" and provider in ("fastllm", "fastllm-compile"):
            assert got.tolist() == want.tolist(), f"{provider}: greedy tokens differ from transformers ({match:.1%})"

    shape = f"GPT-2 124M, prompt {prompt}, batch {batch}, {NEW_TOKENS} new tokens, greedy"
    bench.info(provider=provider, shape=shape, dtype=dtype, threads=torch.get_num_threads())
    if not bench.timing:
        return  # without --benchmark: the equivalence check above is the run
    steps = []

    def step_time():  # one round: a 128-token and a 1-token generate
        steps.append((_timed(lambda: run(ids, NEW_TOKENS)) - _timed(lambda: run(ids, 1))) / (NEW_TOKENS - 1))

    bench(step_time, rounds=1, warmup_rounds=0)  # the equivalence run above was the warm-up
    if steps[0] * NEW_TOKENS < 3.0:  # short rounds: the median of 3 (the host's noise moves single rounds by 20-30%)
        step_time()
        step_time()
    step_s = statistics.median(steps)
    bw = memory_bandwidth()
    bound_s = weight_bytes(model) / bw
    info = dict(
        ms_per_token=round(1e3 * step_s, 2),
        tok_per_s=round(batch / step_s, 1),
        bound_ms=round(1e3 * bound_s, 2),
        bound_fraction=round(bound_s / step_s, 3),
        bandwidth_gb_s=round(bw / 1e9, 1),
    )
    results[provider]["ms"] = step_s
    if provider != "transformers" and "ms" in results.get("transformers", {}):
        info["speedup_vs_transformers"] = round(results["transformers"]["ms"] / step_s, 2)
    bench.extra_info.update(info)
    bench.row(bench="generate_gpt2", provider=provider, dtype=dtype, prompt=prompt, batch=batch, **info)


@pytest.mark.parametrize("provider", ["fastllm", "fastllm-compile"])
def test_generate_swa_mla(bench, provider, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)  # the dispatch users get on a CPU: C++ kernels on
    monkeypatch.delenv("FASTLLM_KERNELS", raising=False)
    torch.manual_seed(0)
    model = Transformer(ModelConfig.from_name("swa-mla-262m")).eval().to(torch.bfloat16)
    ids = list(prompts(512, 1))
    compile_ = provider == "fastllm-compile"

    steps = []

    def decode_step_s():
        _, stats = engine.generate(model, ids, 64, sampling=GREEDY, compile=compile_)
        steps.append(stats.decode_s / 63)

    decode_step_s()  # warm-up, compilation
    steps.clear()
    bench(decode_step_s, rounds=3, warmup_rounds=0)  # the median of 3 (a round: ~2-4 s)
    cfg = model.config
    shape = f"swa-mla-262m ({cfg.layer_kinds().count('sliding')} sliding + {cfg.layer_kinds().count('mla')} MLA layers)"
    bench.info(provider=provider, shape=shape + ", prompt 512, batch 1", dtype="bfloat16")
    if bench.median_s is None:
        return
    step_s = statistics.median(steps)
    bound_s = weight_bytes(model) / memory_bandwidth()
    info = dict(ms_per_token=round(1e3 * step_s, 2), bound_ms=round(1e3 * bound_s, 2))
    info["bound_fraction"] = round(bound_s / step_s, 3)
    bench.extra_info.update(info)
    bench.row(bench="generate_swa_mla", provider=provider, dtype="bfloat16", prompt=512, batch=1, **info)


def perplexity(model, ids: torch.Tensor, window: int = 256) -> float:
    """exp(mean next-token NLL) over non-overlapping windows of a token stream."""
    nll, count = 0.0, 0
    with torch.no_grad():
        for s in range(0, ids.numel() - 1, window):
            chunk = ids[s : s + window + 1][None]
            logits = model(chunk[:, :-1]).float()
            nll += torch.nn.functional.cross_entropy(logits[0], chunk[0, 1:], reduction="sum").item()
            count += chunk.shape[1] - 1
    return math.exp(nll / count)


@pytest.mark.parametrize("corpus", ["english_kjv.txt", "python_stdlib.txt"])
def test_int8_perplexity(bench, corpus, monkeypatch):
    """The accuracy cost of int8 weights: perplexity of the bundled model (trained on real English) on 16k tokens of
    a ../shared corpus, fp32 weights against int8 weight-only and W8A8 (fastllm.quant). Not timed."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.delenv("FASTLLM_KERNELS", raising=False)
    from conftest import SHARED

    path = os.path.join(SHARED, "corpora", corpus)
    if not os.path.exists(path):
        pytest.skip("../shared/corpora not found beside the checkout")
    model, tok = fastllm.load(os.path.join(os.path.dirname(fastllm.__file__), "assets", "default"), dtype=torch.float32)
    with open(path, encoding="utf-8") as f:
        ids = torch.tensor(tok.encode_ordinary(f.read(150_000))[:16384])
    base = perplexity(model.eval(), ids)
    a8 = perplexity(quantize(copy.deepcopy(model), "w8a8"), ids)
    a8_bf16 = perplexity(quantize(copy.deepcopy(model).to(torch.bfloat16), "w8a8"), ids)  # bf16 activations
    qmodel = quantize(model)
    q = bench(perplexity, qmodel, ids, rounds=1, warmup_rounds=0)  # timed: the int8 model's prefill passes
    info = dict(
        tokens=ids.numel(), ppl_fp32=round(base, 4), ppl_int8=round(q, 4), ppl_delta_pct=round(100 * (q / base - 1), 3)
    )
    info.update(ppl_w8a8=round(a8, 4), ppl_w8a8_delta_pct=round(100 * (a8 / base - 1), 3))
    info.update(ppl_w8a8_bf16=round(a8_bf16, 4), ppl_w8a8_bf16_delta_pct=round(100 * (a8_bf16 / base - 1), 3))
    bench.info(provider="fastllm-int8", shape=f"bundled model, {corpus}", dtype="float32")
    bench.extra_info.update(info)
    bench.row(bench="int8_perplexity", corpus=corpus, **info)
    assert abs(q / base - 1) < 0.02 and abs(a8 / base - 1) < 0.02 and abs(a8_bf16 / base - 1) < 0.03, info
