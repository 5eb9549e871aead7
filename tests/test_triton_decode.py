"""The Triton ring-buffer decode kernel (`fastllm.kernels.triton.decode`) under the interpreter, against fp64 oracles.

Oracles: the eager reference `fastllm.kernels.reference.swa_decode` run in fp64, and for the ring layout itself the
prefill reference over the un-wrapped history. Tolerance rule (flash-attention's): the kernel's error against the
fp64 oracle is at most 2x the error of the same attention written naively in PyTorch in the input dtype (dense mask,
scores, softmax and p @ v all in that dtype); fp32 must be within 2e-6. Every never-written slot of every cache
holds NaN, so a kernel that reads one fails.
"""

import math

import pytest
import torch

import fastllm.kernels as K
from fastllm import engine
from fastllm.kernels import _dispatch
from fastllm.kernels import reference as ref
from fastllm.kernels.reference.attention import ring_slot_positions
from fastllm.kernels.triton import decode
from fastllm.models import ModelConfig, Transformer

pytestmark = pytest.mark.triton

F64 = torch.float64
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def make_inputs(B, Tq, H, Hkv, D, Dv, C, lens, sink, dtype, alibi=False, rel=0):
    """q (B, Tq, H, D), NaN-poisoned ring caches (B, C, Hkv, D|Dv), cache_seqlens (B,) int32, alibi (H,), rel (H, R)."""
    q = torch.randn(B, Tq, H, D, dtype=F64).to(dtype)
    k = (torch.randn(B, C, Hkv, D, dtype=F64) * 2).to(dtype)  # * 2: peakier softmax than N(0, 1) keys give
    v = torch.randn(B, C, Hkv, Dv, dtype=F64).to(dtype)
    seqlens = torch.tensor(lens, dtype=torch.int32)
    empty = ring_slot_positions(seqlens, C, sink) < 0  # (B, C)
    k[empty] = math.nan
    v[empty] = math.nan
    slopes = torch.rand(H) * 0.5 if alibi else None
    table = torch.randn(H, rel) if rel else None
    return q, k, v, seqlens, slopes, table


def torch_naive(q, k, v, seqlens, window, sink, slopes, table, scale):
    """The attention written plainly in q's dtype (the 2x rule's yardstick): (B, Tq, H, Dv)."""
    B, Tq, H, D = q.shape
    C, Hkv = k.shape[1], k.shape[2]
    kpos = ring_slot_positions(seqlens, C, sink)  # (B, C)
    qpos = seqlens[:, None].long() - Tq + torch.arange(Tq)  # (B, Tq)
    dist = qpos[:, :, None] - kpos[:, None, :]  # (B, Tq, C)
    ok = (kpos >= 0)[:, None, :] & (dist >= 0)
    if window is not None:
        ok &= (dist < window) | (kpos < sink)[:, None, :]
    written = (kpos >= 0)[:, :, None, None]
    kh = torch.where(written, k, 0).repeat_interleave(H // Hkv, dim=2)  # (B, C, H, D)
    vh = torch.where(written, v, 0).repeat_interleave(H // Hkv, dim=2)  # (B, C, H, Dv)
    s = torch.einsum("bthd,bchd->bhtc", q, kh) * scale  # (B, H, Tq, C)
    if slopes is not None:
        s = s - (slopes[None, :, None, None] * dist[:, None]).to(q.dtype)
    if table is not None:
        s = s + table[:, dist.clamp(0, table.shape[1] - 1)].transpose(0, 1).to(q.dtype)
    s = s.masked_fill(~ok[:, None], -math.inf)
    p = torch.softmax(s, dim=-1).nan_to_num()  # queries that see no key: 0
    return torch.einsum("bhtc,bchd->bthd", p, vh)


def oracle(q, k, v, seqlens, window, sink, slopes, table, scale):
    """The eager reference in fp64: (B, Tq, H, Dv)."""
    slopes, table = (None if x is None else x.to(F64) for x in (slopes, table))
    q, k, v = q.to(F64), k.to(F64), v.to(F64)
    return ref.swa_decode(
        q, k, v, seqlens, window, softmax_scale=scale, sink_tokens=sink, alibi_slopes=slopes, rel_bias=table
    )


def check(o, q, k, v, seqlens, window, sink, slopes=None, table=None, scale=None):
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    want = oracle(q, k, v, seqlens, window, sink, slopes, table, scale)
    assert o.dtype == q.dtype and o.shape == want.shape
    assert torch.isfinite(o).all()
    err = (o.to(F64) - want).abs().max().item()
    if q.dtype == torch.float32:
        assert err <= 2e-6, err
    else:
        naive = torch_naive(q, k, v, seqlens, window, sink, slopes, table, scale)
        naive_err = (naive.to(F64) - want).abs().max().item()
        assert err <= 2 * naive_err + 1e-6, (err, naive_err)


# (B, Tq, H, Hkv, D, Dv, C, window, sink, lens, alibi, rel, dtype, num_splits); lens cover 1, < C, == C and rings
# wrapped many times; rows = Tq * H / Hkv cover both BLOCK_M classes and several m-blocks.
CASES = {
    "mha-full-cache": (1, 1, 4, 4, 64, 64, 32, None, 0, [20], False, 0, "fp32", None),
    "gqa4-w17-sinks": (3, 2, 8, 2, 80, 80, 40, 17, 4, [1, 40, 283], False, 0, "fp32", None),
    "mqa-mla-dims-bf16": (3, 4, 4, 1, 192, 128, 80, 64, 0, [2, 80, 1000], False, 0, "bf16", 3),
    "w1-sinks-fp16": (2, 1, 4, 2, 32, 32, 8, 1, 4, [3, 50], False, 0, "fp16", None),
    "tq8-g8-alibi-fp16": (1, 8, 8, 1, 64, 64, 75, 64, 4, [500], True, 0, "fp16", 2),
    "rel-alibi-fp32": (2, 2, 4, 4, 128, 128, 48, 17, 0, [30, 48], True, 20, "fp32", 4),
    "full-sinks-rel-bf16": (2, 4, 8, 2, 96, 96, 40, None, 4, [5, 40], False, 7, "bf16", 2),
    "d256-fp16": (1, 2, 16, 2, 256, 256, 32, 17, 0, [100], False, 0, "fp16", None),
    "mqa32-bf16": (3, 1, 32, 1, 64, 64, 20, 17, 0, [1, 19, 20], False, 0, "bf16", None),
    "fp32-rows32-rel": (1, 4, 8, 1, 64, 64, 24, 17, 4, [60], True, 5, "fp32", 3),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_matches_fp64_reference(case):
    B, Tq, H, Hkv, D, Dv, C, window, sink, lens, alibi, rel, dtype, splits = case
    q, k, v, seqlens, slopes, table = make_inputs(B, Tq, H, Hkv, D, Dv, C, lens, sink, DTYPES[dtype], alibi, rel)
    o = decode.swa_decode(
        q, k, v, seqlens, window, sink_tokens=sink, alibi_slopes=slopes, rel_bias=table, num_splits=splits
    )
    check(o, q, k, v, seqlens, window, sink, slopes, table)


@pytest.mark.parametrize("num_splits", [1, 2, 5, 16])
def test_split_counts_agree(num_splits):
    # 16 splits of a row with 9 or 70 visible keys leave some splits empty: the combine must skip them
    q, k, v, seqlens, slopes, _ = make_inputs(2, 2, 4, 2, 64, 64, 70, [9, 300], 2, torch.float16, alibi=True)
    o = decode.swa_decode(q, k, v, seqlens, 64, sink_tokens=2, alibi_slopes=slopes, num_splits=num_splits)
    check(o, q, k, v, seqlens, 64, 2, slopes)
    one = decode.swa_decode(q, k, v, seqlens, 64, sink_tokens=2, alibi_slopes=slopes, num_splits=1)
    torch.testing.assert_close(o, one, atol=2e-3, rtol=0)


def test_split_heuristic(monkeypatch):
    assert decode._num_splits(programs=132, max_keys=8192, block_n=64, sm_count=132) == 1  # the GPU is full
    assert decode._num_splits(programs=8, max_keys=8192, block_n=64, sm_count=132) == 32  # 2 programs per SM
    assert decode._num_splits(programs=8, max_keys=600, block_n=64, sm_count=132) == 2  # >= 4 tiles per split
    assert decode._num_splits(programs=1, max_keys=10**6, block_n=64, sm_count=132) == decode.MAX_SPLITS
    assert decode._num_splits(programs=1, max_keys=100, block_n=64, sm_count=132) == 1
    # the launcher's default: B * Hkv = 1 against a 1024-slot fp32 cache takes 8 splits of 4 32-key tiles
    chosen, heuristic = [], decode._num_splits
    monkeypatch.setattr(decode, "_num_splits", lambda *args: chosen.append(heuristic(*args)) or chosen[-1])
    q, k, v, seqlens, _, _ = make_inputs(1, 1, 2, 1, 64, 64, 1024, [1000], 0, torch.float32)
    check(decode.swa_decode(q, k, v, seqlens, None), q, k, v, seqlens, None, 0)
    assert chosen == [8]


def test_queries_that_see_nothing_give_zeros():
    # row 0 is empty and row 1 holds 2 tokens for 4 queries: queries at negative positions see no key
    q, k, v, seqlens, _, _ = make_inputs(2, 4, 2, 1, 32, 32, 16, [0, 2], 0, torch.float16)
    o = decode.swa_decode(q, k, v, seqlens, 8, num_splits=3)
    assert (o[0] == 0).all() and (o[1, :2] == 0).all() and (o[1, 2:] != 0).any()
    check(o, q, k, v, seqlens, 8, 0)


def test_ring_equals_prefill_over_the_history():
    # write a 90-token history into a 24-slot ring (2 sinks) token by token, then decode the last 3 queries
    B, Tq, H, Hkv, D, S, C, W, sink = 2, 3, 4, 2, 32, 90, 24, 16, 2
    q = torch.randn(B, Tq, H, D)
    k_hist, v_hist = torch.randn(B, S, Hkv, D), torch.randn(B, S, Hkv, D)
    k_cache = torch.full((B, C, Hkv, D), math.nan)
    v_cache = torch.full((B, C, Hkv, D), math.nan)
    for s in range(S):
        slot = s if s < sink else sink + (s - sink) % (C - sink)
        k_cache[:, slot], v_cache[:, slot] = k_hist[:, s], v_hist[:, s]
    seqlens = torch.full((B,), S, dtype=torch.int32)
    o = K.swa_decode(q, k_cache, v_cache, seqlens, W, sink_tokens=sink)  # the public op, dispatched to Triton
    want = ref.sliding_window_attention(q, k_hist, v_hist, W, sink_tokens=sink)
    torch.testing.assert_close(o, want, atol=2e-6, rtol=0)


def test_strided_caches_and_queries():
    # per-layer views of a (B, C, 2 * Hkv, D) buffer, and q sliced from a packed qkv projection
    B, Tq, H, Hkv, D, C = 2, 2, 4, 2, 64, 20
    buf = torch.randn(B, C, 2 * Hkv, D)
    k, v = buf[:, :, :Hkv], buf[:, :, Hkv:]
    q = torch.randn(B, Tq, 3 * H, D)[:, :, :H]
    seqlens = torch.tensor([7, 31], dtype=torch.int32)
    o = decode.swa_decode(q, k, v, seqlens, 17, sink_tokens=1, softmax_scale=0.3, num_splits=2)
    check(o, q, k, v, seqlens, 17, 1, scale=0.3)


def test_bias_tables_in_low_precision():
    q, k, v, seqlens, slopes, table = make_inputs(1, 2, 4, 2, 64, 64, 32, [40], 0, torch.float32, alibi=True, rel=9)
    o = decode.swa_decode(q, k, v, seqlens, 30, alibi_slopes=slopes.bfloat16(), rel_bias=table.half())
    check(o, q, k, v, seqlens, 30, 0, slopes.bfloat16().float(), table.half().float())


def test_every_launch_config_is_listed_for_aot():
    listed = {cfg.name for cfg in decode.aot_configs()}
    for dtype in DTYPES.values():
        for D, Dv in [(32, 32), (64, 64), (80, 80), (128, 128), (192, 128), (256, 256)]:
            for rows in (1, 16, 17, 64, 256):
                for has_rel_bias in (False, True):
                    cfg = decode._config(dtype, D, Dv, rows, has_rel_bias)
                    assert decode._aot_config(cfg).name in listed


def _args(**over):
    q, k, v, seqlens, _, _ = make_inputs(2, 1, 4, 2, 32, 32, 16, [3, 10], 0, torch.float32)
    args = dict(q=q, k_cache=k, v_cache=v, cache_seqlens=seqlens, window=8)
    args.update(over)
    return args


BAD = {
    "3-d q": (dict(q=torch.randn(2, 4, 32)), "expected q \\(B, Tq, H, D\\)"),
    "mixed dtypes": (dict(q=torch.randn(2, 1, 4, 32, dtype=torch.float16)), "one dtype"),
    "fp64": (dict(q=torch.randn(2, 1, 4, 32, dtype=F64)), "one dtype"),
    "cache shapes": (dict(v_cache=torch.randn(2, 15, 2, 32)), "agreeing on C and Hkv"),
    "heads": (dict(q=torch.randn(2, 1, 3, 32)), "multiple of Hkv"),
    "head dim": (dict(q=torch.randn(2, 1, 4, 320), k_cache=torch.randn(2, 16, 2, 320)), "head dims in"),
    "last dim stride": (dict(q=torch.randn(2, 1, 4, 64)[..., ::2]), "contiguous last dim"),
    "window 0": (dict(window=0), "window None or an int >= 1"),
    "sinks fill C": (dict(sink_tokens=16), "sink_tokens an int in \\[0, C=16\\)"),
    "float seqlens": (dict(cache_seqlens=torch.tensor([3.0, 10.0])), "int32/int64 \\(2,\\)"),
    "negative seqlens": (dict(cache_seqlens=torch.tensor([3, -1])), "cache_seqlens >= 0"),
    "wrapped full cache": (dict(window=None, cache_seqlens=torch.tensor([3, 17])), "needs a window"),
    "ring too short": (dict(window=17, cache_seqlens=torch.tensor([3, 40])), "C >= window \\+ sink_tokens"),
    "alibi shape": (dict(alibi_slopes=torch.rand(2)), "alibi_slopes a float \\(4,\\)"),
    "rel_bias shape": (dict(rel_bias=torch.rand(4, 0)), "rel_bias a float \\(H=4, R>=1\\)"),
    "num_splits": (dict(num_splits=0), "num_splits an int in \\[1, 128\\]"),
}


@pytest.mark.parametrize("over,match", BAD.values(), ids=BAD.keys())
def test_invalid_arguments_raise(over, match):
    with pytest.raises(ValueError, match=match):
        decode.swa_decode(**_args(**over))


@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
def test_torch_compile_fullgraph(backend):
    q, k, v, seqlens, slopes, _ = make_inputs(2, 2, 4, 2, 32, 32, 16, [5, 40], 1, torch.float32, alibi=True)

    def step(q, k, v, seqlens):
        return K.swa_decode(q, k, v, seqlens, 8, sink_tokens=1, alibi_slopes=slopes) * 2

    compiled = torch.compile(step, fullgraph=True, backend=backend)
    torch.testing.assert_close(compiled(q, k, v, seqlens), step(q, k, v, seqlens), atol=0, rtol=0)


@torch.no_grad()
def test_sliding_window_model_generates_the_same_greedy_tokens(monkeypatch):
    """A sliding-window GQA model with sinks and a clipped relative bias (llm-scratch v1, narrow, random weights)
    decodes the same greedy tokens with the Triton kernel (interpreted) as with the reference, its rings wrapping.

    Only swa_decode runs through Triton here (dispatch "auto" with just its launcher registered): the model's own
    cache layout, per-row lengths and strided q are what the kernel reads.
    """
    overrides = dict(n_layer=2, d_model=64, n_head=4, n_kv_head=2, vocab_size=101, max_seq_len=64, rel_bias=6)
    cfg = ModelConfig.from_name("llm-scratch-v1", **overrides, attention="sliding", window=5, sink_tokens=2)
    model = Transformer(cfg).eval()
    for p in model.parameters():
        p.add_(0.3 * torch.randn_like(p))  # away from init, where attention is near uniform
    prompts = [torch.randint(0, 101, (n,)) for n in (3, 11)]  # rows at different lengths in one ring
    greedy = engine.SamplingParams(temperature=0.0)
    monkeypatch.setenv("FASTLLM_KERNELS", "reference")
    want, _ = engine.generate(model, prompts, 10, sampling=greedy)

    calls = []

    def counted(*args, **kwargs):
        calls.append(args[0].shape)
        return decode.swa_decode(*args, **kwargs)

    _dispatch.triton_status()  # loads every launcher first, so that none registers into the dict patched below
    monkeypatch.setattr(_dispatch, "_TRITON_OPS", {"swa_decode": counted})
    monkeypatch.setenv("FASTLLM_KERNELS", "auto")
    got, _ = engine.generate(model, prompts, 10, sampling=greedy)
    assert got == want
    assert len(calls) == 2 * 9  # two layers, 9 decode steps after the prefill
