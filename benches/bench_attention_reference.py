"""The eager sliding-window attention reference costs O(T * W): time per token stays flat as T grows.

Providers: "reference" is `fastllm.kernels.reference.sliding_window_attention` (query blocks against their key
band); "torch" is the dense baseline, SDPA over the full (T, T) grid with an explicit window mask, whose time per
token grows with T. Both are checked against each other before timing. extra_info carries the time per token
(us_per_token), the useful attention throughput (GFLOP/s over the 4 * T * W * H * D multiply-adds in the band), the
peak memory one call adds (peak_mb: max RSS of a fresh process during the call minus its RSS before it; the
reference's grows with T * W, the dense baseline's with T^2) and the speedup over the dense baseline.
Run with `pytest benches/bench_attention_reference.py --benchmark`.
"""

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from fastllm.kernels.reference import sliding_window_attention

H, HKV, D, WINDOW, SINK = 8, 2, 64, 256, 4


def dense_baseline(q, k, v, window, sink):
    T, S = q.shape[1], k.shape[1]
    p, j = S - T + torch.arange(T), torch.arange(S)
    d = p[:, None] - j[None, :]
    mask = (d >= 0) & ((d < window) | (j < sink)[None, :])  # (T, S) explicit mask: O(T * S) memory and time
    G = q.shape[2] // k.shape[2]
    kh, vh = (x.repeat_interleave(G, dim=2).transpose(1, 2) for x in (k, v))
    return F.scaled_dot_product_attention(q.transpose(1, 2), kh, vh, attn_mask=mask).transpose(1, 2)


def inputs(T):
    g = torch.Generator().manual_seed(T)
    return [torch.randn(1, T, h, D, generator=g) for h in (H, HKV, HKV)]


_PEAK_SCRIPT = """
import sys
sys.path.insert(0, sys.argv[1])
from bench_attention_reference import SINK, WINDOW, dense_baseline, inputs, sliding_window_attention
def status(key):  # kB -> bytes; VmHWM is this process image's peak RSS (getrusage's max carries the forked parent's)
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key + ":"))
provider, T = sys.argv[2], int(sys.argv[3])
q, k, v = inputs(T)
before = status("VmRSS")
if provider == "reference":
    sliding_window_attention(q, k, v, WINDOW, sink_tokens=SINK)
else:
    dense_baseline(q, k, v, WINDOW, SINK)
print(status("VmHWM") - before)
"""


def peak_mb(provider: str, T: int) -> float:
    """MB of memory one call adds at its peak (max RSS during the call minus RSS before it), in a fresh process."""
    here = os.path.dirname(os.path.abspath(__file__))
    out = subprocess.run(
        [sys.executable, "-c", _PEAK_SCRIPT, here, provider, str(T)], capture_output=True, text=True, timeout=600
    )
    if out.returncode != 0:
        raise RuntimeError(f"peak memory run failed: {out.stderr[-2000:]}")
    return int(out.stdout.split()[-1]) / 1e6


_MEDIANS: dict[int, dict[str, float]] = {}


@pytest.mark.parametrize("provider", ["torch", "reference"])
@pytest.mark.parametrize("T", [1024, 2048, 4096, 8192])
def test_swa_reference_scaling(bench, T, provider):
    q, k, v = inputs(T)
    if provider == "torch" or T == 1024:  # equivalence first
        ref = sliding_window_attention(q, k, v, WINDOW, sink_tokens=SINK)
        torch.testing.assert_close(ref, dense_baseline(q, k, v, WINDOW, SINK), atol=2e-5, rtol=2e-5)
    if provider == "reference":
        bench(sliding_window_attention, q, k, v, WINDOW, sink_tokens=SINK, rounds=3)
    else:
        bench(dense_baseline, q, k, v, WINDOW, SINK, rounds=3)
    shape = f"T={T} H={H} Hkv={HKV} D={D} W={WINDOW} sink={SINK}"
    bench.info(provider=provider, shape=shape, dtype="float32", threads=torch.get_num_threads())
    if bench.median_s is not None:
        us_per_token = 1e6 * bench.median_s / T
        gflops = 4 * T * WINDOW * H * D / bench.median_s / 1e9  # multiply-adds inside the band only
        info = dict(
            us_per_token=round(us_per_token, 2), gflops=round(gflops, 2), peak_mb=round(peak_mb(provider, T), 1)
        )
        medians = _MEDIANS.setdefault(T, {})
        medians[provider] = bench.median_s
        if provider == "reference" and "torch" in medians:
            info["speedup_vs_torch"] = round(medians["torch"] / bench.median_s, 2)
        bench.extra_info.update(info)
        bench.row(bench="swa_reference", provider=provider, T=T, **info)
