"""Next-token sampling: repetition penalty, temperature, top-k, top-p and the draw, against what users write.

One setting throughout, the usual chat one: temperature 0.8, top-k 50, top-p 0.9, repetition penalty 1.1 over a
history of 64 tokens per row (which holds each row's largest logit, so that the penalty changes the ranking).
Logits are N(0, 2.5^2) fp32, for GPT-2's vocabulary (50257) and Llama 3's (128256), batch 1 and 32 (CUDA) or 1, 8
and 64 (CPU).

Sampling is random, so equivalence is checked on the first 4 rows against an fp64 run of the plain pipeline:
(a) greedy (temperature 0) gives the argmax of the penalised logits, for every provider; (b) the support (the tokens
left with nonzero probability after the filters) is the same set and the probabilities agree to 1e-6; (c) with one
shared U[0, 1) noise tensor every provider picks the same ids (`fastllm.kernels.sample` takes `noise=`; for the
others the same exponential race, argmax p / -log(u), is run on their probabilities); (d) the ids of the timed
call lie in the support.

- `test_sample_cpu`: `fastllm.kernels.sample` (provider "reference", the eager path fastllm runs on the CPU) against
  "torch", the Hugging Face-style pipeline written in plain PyTorch (penalty by gather/scatter, temperature, top-k
  by `topk`, top-p by sort + cumsum, softmax, `torch.multinomial`), and "transformers", transformers' own
  LogitsProcessorList (RepetitionPenalty, Temperature, TopK, TopP) + softmax + multinomial (skipped when
  transformers is not installed). Reported: tok_per_s (rows sampled per second; the call's median time is the
  median), us_per_token, logits_mb_per_s (the logits read once, B * V * 4 bytes, over the median), and
  speedup_vs_torch / speedup_vs_transformers (that provider's median over this one's, where it ran in the same
  session). The goal: the reference at least 3x faster than transformers at batch 8.
- `test_sample_interpreter`: the Triton sampler run once by Triton's interpreter on a small odd vocabulary with mixed
  per-row settings (a greedy row, top-k off, top-p off), ids compared with the reference given the same noise
  (provider "triton-interpreter"; an equivalence check, the time is the interpreter's). Needs TRITON_INTERPRET=1.
- `test_sample_cuda`: provider "triton" (the fused kernel, no host sync: a device seed and a caller-held error flag)
  against "torch" (the same plain pipeline on the GPU) and "flashinfer" (the penalty and temperature in torch, then
  `flashinfer.sampling.top_k_top_p_sampling_from_logits`, skipped when not installed): GB/s of logits read and its
  fraction of DRAM bandwidth. Skipped without CUDA.

Run with `pytest benches/bench_sampling.py --benchmark`.
"""

import functools
import os

import pytest
import torch

import fastllm.kernels as K
from fastllm.kernels import reference as ref

SETTINGS = dict(temperature=0.8, top_k=50, top_p=0.9, repetition_penalty=1.1)
PARAMS = "T=0.8 k=50 p=0.9 rp=1.1 L=64"  # SETTINGS and the history length, for the reports
HISTORY = 64
CHECK_ROWS = 4
_NEG_INF = float("-inf")
_MEDIANS: dict[tuple, dict[str, float]] = {}  # case -> provider -> median seconds, for the speedups


@functools.lru_cache(maxsize=1)
def sampling_inputs(B: int, V: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """logits (B, V) fp32 ~ N(0, 2.5^2) and a history (B, HISTORY) of ids holding each row's top token."""
    g = torch.Generator(device).manual_seed(B * 1_000_003 + V)
    logits = torch.randn(B, V, generator=g, device=device) * 2.5
    prev = torch.randint(0, V, (B, HISTORY), generator=g, device=device)
    prev[:, 0] = logits.argmax(-1)
    return logits, prev


# ---- the plain PyTorch pipeline (Hugging Face style) ---------------------------------------------------------------


def penalised(logits, prev, penalty):
    """Repetition penalty by gather/scatter: a seen token's logit is divided by the penalty if positive, else
    multiplied (Hugging Face's RepetitionPenaltyLogitsProcessor). Computed in fp32, or fp64 for fp64 logits."""
    z = logits.to(torch.promote_types(logits.dtype, torch.float32))
    seen = z.gather(1, prev)  # (B, L)
    return z.scatter(1, prev, torch.where(seen < 0, seen * penalty, seen / penalty))  # (B, V)


def filtered_logits(logits, prev, temperature, top_k, top_p, repetition_penalty):
    """Penalty, temperature, top-k (ties with the k-th kept), top-p: -inf where a token is filtered out."""
    z = penalised(logits, prev, repetition_penalty) / temperature  # (B, V)
    kth = torch.topk(z, top_k, dim=-1).values[:, -1:]  # (B, 1)
    z = z.masked_fill(z < kth, _NEG_INF)
    sorted_z, order = torch.sort(z, dim=-1, descending=True)  # (B, V)
    p = sorted_z.softmax(-1)
    remove = p.cumsum(-1) - p >= top_p  # the mass strictly ahead of a token already reaches top_p
    return z.masked_fill(remove.scatter(1, order, remove), _NEG_INF)


def torch_sample(logits, prev, generator):
    probs = filtered_logits(logits, prev, **SETTINGS).softmax(-1)  # (B, V)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)  # (B,)


def torch_greedy(logits, prev):
    return penalised(logits, prev, SETTINGS["repetition_penalty"]).argmax(-1)


# ---- transformers' processors ---------------------------------------------------------------------------------------


def hf_processors():
    """transformers' LogitsProcessorList for SETTINGS (warpers in generate()'s order), or a skip with the reason."""
    lp = pytest.importorskip("transformers.generation.logits_process", reason="peer transformers is not installed")
    return lp.LogitsProcessorList(
        [
            lp.RepetitionPenaltyLogitsProcessor(SETTINGS["repetition_penalty"]),
            lp.TemperatureLogitsWarper(SETTINGS["temperature"]),
            lp.TopKLogitsWarper(SETTINGS["top_k"]),
            lp.TopPLogitsWarper(SETTINGS["top_p"]),
        ]
    )


def hf_sample(procs, logits, prev, generator):
    probs = procs(prev, logits).softmax(-1)  # (B, V)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)


# ---- the providers ---------------------------------------------------------------------------------------------------


def per_row(B: int, device) -> tuple:
    """SETTINGS as the per-row tensors of `reference.sampling_probs` (min_p off)."""
    full = functools.partial(torch.full, (B,), device=device)
    t, k, p, rp = (SETTINGS[n] for n in ("temperature", "top_k", "top_p", "repetition_penalty"))
    return full(t), full(k, dtype=torch.int64), full(p), full(0.0), full(rp)


class Provider:
    """A provider's timed draw and, for the equivalence checks, its greedy ids and filtered probabilities."""

    def __init__(self, name: str, device: str):
        self.name = name
        self.gen = torch.Generator(device).manual_seed(0)
        if name == "transformers":
            self.procs = hf_processors()
            self.greedy_procs = self.procs[0]  # greedy search applies the processors, not the warpers
        if name == "flashinfer":
            self.fi = pytest.importorskip("flashinfer.sampling", reason="peer flashinfer is not installed")
        self.flag = torch.zeros(1, dtype=torch.int32, device=device)  # the Triton sampler's error bits

    def draw(self, logits, prev):
        if self.name in ("reference", "triton"):
            flag = self.flag if self.name == "triton" else None  # no host read per call on the GPU
            return K.sample(logits, **SETTINGS, prev_tokens=prev, generator=self.gen, nan_flag=flag)
        if self.name == "torch":
            return torch_sample(logits, prev, self.gen)
        if self.name == "transformers":
            return hf_sample(self.procs, logits, prev, self.gen)
        z = penalised(logits, prev, SETTINGS["repetition_penalty"]) / SETTINGS["temperature"]
        return self.fi.top_k_top_p_sampling_from_logits(
            z, SETTINGS["top_k"], SETTINGS["top_p"], filter_apply_order="top_k_first", generator=self.gen
        )

    def greedy(self, logits, prev):
        if self.name in ("reference", "triton"):
            return K.sample(logits, temperature=0, repetition_penalty=SETTINGS["repetition_penalty"], prev_tokens=prev)
        if self.name == "transformers":
            return self.greedy_procs(prev, logits).argmax(-1)
        if self.name == "flashinfer":
            z = penalised(logits, prev, SETTINGS["repetition_penalty"])
            return self.fi.top_k_top_p_sampling_from_logits(z, 1, 1.0, generator=self.gen)
        return torch_greedy(logits, prev)

    def probs(self, logits, prev):
        """(B, V) probabilities after the filters, or None for a provider that does not expose them."""
        if self.name in ("reference", "triton"):
            return ref.sampling_probs(logits, *per_row(logits.shape[0], logits.device), prev)
        if self.name == "torch":
            return filtered_logits(logits, prev, **SETTINGS).softmax(-1)
        if self.name == "transformers":
            return self.procs(prev, logits).softmax(-1)
        return None

    def race(self, logits, prev, noise):
        """The ids drawn with the shared noise: the op's own `noise=` for fastllm, the exponential race otherwise."""
        if self.name in ("reference", "triton"):
            return K.sample(logits, **SETTINGS, prev_tokens=prev, noise=noise)
        probs = self.probs(logits, prev)
        return None if probs is None else exponential_race(probs, noise)


def exponential_race(probs, noise):
    """argmax over the support of p / E, E = -log(u) ~ Exp(1): an exact draw from probs (the reference's rule)."""
    race = probs.double() / -torch.log(noise.double())
    return torch.where(probs > 0, race, torch.full_like(race, -1.0)).argmax(-1)


def check_equivalence(p: Provider, logits, prev) -> torch.Tensor:
    """Checks (a)-(c) of the module docstring on the first CHECK_ROWS rows; returns the fp64 support (R, V)."""
    z, h = logits[:CHECK_ROWS], prev[:CHECK_ROWS]
    want_greedy = torch_greedy(z.double(), h)
    got_greedy = p.greedy(z, h)
    assert torch.equal(got_greedy, want_greedy), f"{p.name}: greedy ids {got_greedy} != argmax {want_greedy}"

    want = filtered_logits(z.double(), h, **SETTINGS).softmax(-1)  # (R, V) the fp64 oracle
    support = want > 0
    got = p.probs(z, h)
    if got is not None:
        assert torch.equal(got > 0, support), f"{p.name}: support differs from fp64 in {(got > 0) ^ support}"
        torch.testing.assert_close(got.double(), want, atol=1e-6, rtol=0)

    noise = torch.rand(z.shape, generator=torch.Generator(z.device).manual_seed(1), device=z.device)
    got_ids = p.race(z, h, noise)
    if got_ids is not None:
        assert torch.equal(got_ids, exponential_race(want, noise)), f"{p.name}: ids with shared noise differ"
    return support


def assert_in_support(ids, support, name: str) -> None:
    rows = torch.arange(support.shape[0], device=support.device)
    assert bool(support[rows, ids[: support.shape[0]]].all()), f"{name}: drew ids outside the support"


def speedups(key: tuple, provider: str, median_s: float, baselines=("torch",)) -> dict:
    """speedup_vs_<baseline>: the baseline's median over this provider's, for each baseline that ran this case."""
    medians = _MEDIANS.setdefault(key, {})
    medians[provider] = median_s
    return {f"speedup_vs_{b}": round(medians[b] / median_s, 2) for b in baselines if b != provider and b in medians}


# ---- CPU -----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("provider", ["torch", "transformers", "reference"])
@pytest.mark.parametrize("B", [1, 8, 64])
@pytest.mark.parametrize("V", [50257, 128256])
def test_sample_cpu(bench, V, B, provider):
    assert K.backend_for("sample_philox", torch.device("cpu")) == "reference"  # what fastllm runs on a CPU
    logits, prev = sampling_inputs(B, V, "cpu")
    p = Provider(provider, "cpu")
    support = check_equivalence(p, logits, prev)

    ids = bench(p.draw, logits, prev, rounds=3 if B * V >= 1 << 20 else 10, warmup_rounds=1)
    assert_in_support(ids, support, provider)
    peer = "transformers" if provider == "transformers" else None
    shape = f"B={B} V={V}"
    bench.info(peer, provider=provider, shape=shape, dtype="float32", device="cpu", params=PARAMS)
    bench.extra_info.update(threads=torch.get_num_threads())
    if bench.median_s is None:
        return
    t = bench.median_s
    metrics = dict(
        tok_per_s=round(B / t, 1), us_per_token=round(1e6 * t / B, 1), logits_mb_per_s=round(B * V * 4 / t / 1e6, 1)
    )
    metrics.update(speedups(("cpu", B, V), provider, t, ("torch", "transformers")))
    bench.extra_info.update(metrics)
    bench.row(bench="sample_cpu", provider=provider, B=B, V=V, us=round(1e6 * t, 1), **metrics)


# ---- Triton's interpreter (no GPU) ----------------------------------------------------------------------------------


def test_sample_interpreter(bench):
    if torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("the interpreter check is for machines without a GPU (TRITON_INTERPRET=1)")
    from fastllm.kernels.triton import sampling as ts

    B, V = 5, 3001
    g = torch.Generator().manual_seed(V)
    logits = torch.randn(B, V, generator=g) * 2.5
    prev = torch.randint(-1, V, (B, 16), generator=g)  # -1: padding
    noise = torch.rand(B, V, generator=g)
    params = (
        torch.tensor([0.8, 0.0, 1.0, 0.7, 1.3]),  # temperature; row 1 is greedy
        torch.tensor([50, 50, 0, 20, 0]),  # top_k; 0 is off
        torch.tensor([0.9, 0.9, 0.8, 1.0, 1.0]),  # top_p; 1 is off
        torch.tensor([0.0, 0.0, 0.0, 0.0, 0.05]),  # min_p
        torch.tensor([1.1, 1.1, 1.0, 1.3, 0.9]),  # repetition_penalty
    )
    want = ref.sample_from_noise(logits, noise, *params, prev)
    got = bench(ts.sample_from_noise, logits, noise, *params, prev, rounds=1, warmup_rounds=0)
    bench.info(provider="triton-interpreter", shape=f"B={B} V={V}", dtype="float32", device="cpu", params="mixed")
    assert torch.equal(got, want), f"Triton (interpreted) ids {got.tolist()} != reference {want.tolist()}"
    bench.row(bench="sample_interpreter", provider="triton-interpreter", B=B, V=V, checked="ids == reference")


# ---- CUDA ----------------------------------------------------------------------------------------------------------


def dram_bytes_per_s(device: int = 0) -> float | None:
    """Theoretical DRAM bandwidth: 2 transfers per clock x bus bytes x memory clock (kHz); None if not reported."""
    props = torch.cuda.get_device_properties(device)
    bus, clock_khz = getattr(props, "memory_bus_width", 0), getattr(props, "memory_clock_rate", 0)
    return 2 * bus / 8 * clock_khz * 1e3 if bus and clock_khz else None


@pytest.mark.parametrize("provider", ["torch", "flashinfer", "triton"])
@pytest.mark.parametrize("B", [1, 32, 256])
@pytest.mark.parametrize("V", [50257, 128256, 151936])
def test_sample_cuda(bench, V, B, provider):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device; on the CPU see test_sample_interpreter")
    if provider == "triton":
        assert K.backend_for("sample_philox", torch.device("cuda")) == "triton"
    logits, prev = sampling_inputs(B, V, "cuda")
    p = Provider(provider, "cuda")
    support = check_equivalence(p, logits, prev)
    for _ in range(8):  # (d) for a provider that exposes no probabilities: its draws stay in the support
        assert_in_support(p.draw(logits, prev), support, provider)
    torch.cuda.synchronize()

    reps = 20  # back-to-back calls, so that launch overhead does not dominate batch 1

    def steps():
        for _ in range(reps):
            p.draw(logits, prev)
        torch.cuda.synchronize()

    bench(steps, rounds=10, warmup_rounds=2)
    K.check_sample_flag(p.flag)  # the Triton sampler's error bits, read once
    peer = {"flashinfer": "flashinfer-python"}.get(provider)
    shape = f"B={B} V={V}"
    bench.info(peer, provider=provider, shape=shape, dtype="float32", device="cuda", params=PARAMS)
    if bench.median_s is None:
        return
    t = bench.median_s / reps
    gbps = B * V * 4 / t / 1e9
    peak = dram_bytes_per_s()
    metrics = dict(gb_per_s=round(gbps, 1), tok_per_s=round(B / t, 1), us_per_token=round(1e6 * t / B, 3))
    metrics["dram_bw_ratio"] = round(gbps * 1e9 / peak, 3) if peak else None
    metrics.update(speedups(("cuda", B, V), provider, t))
    bench.extra_info.update(metrics)
    bench.row(bench="sample_cuda", provider=provider, B=B, V=V, us=round(1e6 * t, 2), **metrics)
