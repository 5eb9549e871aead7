"""The Triton MLA decode kernel (`fastllm.kernels.triton.mla`) under the interpreter, against fp64 oracles.

Oracles: the eager reference (`fastllm.kernels.reference.mla_decode`) run in fp64, and for the absorbed form itself
the decompress-K/V reference `mla_decode_naive`. Tolerance rule (flash-attention's): the kernel's error against the
fp64 oracle is at most 2x the error of the same attention written naively in PyTorch in the input dtype (scores,
softmax and p @ c all in that dtype), plus cosine similarity > 0.99999; fp32 must also be within 1e-5 relative.
Caches are poisoned with NaN wherever the kernel must not read: pages no row uses, the tail of each row's last page,
and for contiguous caches every slot past the row's length.
"""

import math

import pytest
import torch
import torch.nn.functional as F

import fastllm.kernels as K
from fastllm import engine
from fastllm.kernels import _dispatch
from fastllm.kernels import reference as ref
from fastllm.kernels.triton import mla
from fastllm.models import ModelConfig, Transformer

pytestmark = pytest.mark.triton

F64 = torch.float64
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def make_inputs(B, Tq, H, R, Dr, lens, page_size=None, dtype=torch.float32):
    """q (B, Tq, H, R + Dr), a NaN-poisoned cache (contiguous, or a page pool with a permuted block table) and the
    contiguous clean cache (B, S, R + Dr) the oracles read."""
    S = max(max(lens), 1)
    q = torch.randn(B, Tq, H, R + Dr, dtype=F64).to(dtype)
    clean = (torch.randn(B, S, R + Dr, dtype=F64) * 2).to(dtype)  # * 2: peakier softmax than N(0, 1) rows give
    seqlens = torch.tensor(lens, dtype=torch.int32)
    if page_size is None:
        cache = clean.clone()
        for b, n in enumerate(lens):
            cache[b, n:] = math.nan
        return q, cache, seqlens, None, clean
    max_pages = -(-S // page_size)
    num_pages = 2 * B * max_pages + 1  # unused pages in between
    table = torch.randperm(num_pages)[: B * max_pages].view(B, max_pages).to(torch.int32)
    pool = torch.full((num_pages, page_size, R + Dr), math.nan, dtype=dtype)
    for b, n in enumerate(lens):
        for s in range(n):
            pool[table[b, s // page_size], s % page_size] = clean[b, s]
    return q, pool, seqlens, table, clean


def torch_naive(q, clean, lens, R, scale):
    """The attention written plainly in q's dtype (the 2x rule's yardstick): (B, Tq, H, R)."""
    B, Tq, H, D = q.shape
    o = torch.zeros(B, Tq, H, R, dtype=q.dtype)
    for b, n in enumerate(lens):
        if n == 0:
            continue
        kv = clean[b, :n]  # (n, D)
        s = (q[b].reshape(Tq * H, D) @ kv.T).view(Tq, H, n) * scale  # (Tq, H, n)
        allowed = torch.arange(n)[None, :] <= (n - Tq + torch.arange(Tq))[:, None]  # (Tq, n)
        s = s.masked_fill(~allowed[:, None, :], -math.inf)
        p = torch.softmax(s, dim=-1).nan_to_num()  # queries at negative positions see nothing: 0
        o[b] = (p.view(Tq * H, n) @ kv[:, :R]).view(Tq, H, R)
    return o


def check_against_oracle(o, lse, q, clean, lens, R, scale):
    want, want_lse = ref.mla_decode(q.to(F64), clean.to(F64), torch.tensor(lens), kv_lora_rank=R, softmax_scale=scale)
    assert o.dtype == q.dtype and o.shape == want.shape and lse.dtype == torch.float32
    assert torch.isfinite(o).all()
    assert torch.equal(torch.isinf(lse), torch.isinf(want_lse)) and (lse[torch.isinf(lse)] < 0).all()
    finite = torch.isfinite(want_lse)
    torch.testing.assert_close(lse[finite].to(F64), want_lse[finite].to(F64), atol=2e-5, rtol=0)
    assert (o[~finite] == 0).all()  # rows (and queries) that see no key give zeros
    err = (o.to(F64) - want).abs().max().item()
    err_torch = (torch_naive(q, clean, lens, R, scale).to(F64) - want).abs().max().item()
    assert err <= 2 * err_torch + 1e-6, f"kernel error {err:.3g} > 2x PyTorch's {err_torch:.3g} in {q.dtype}"
    if q.dtype == torch.float32:  # relative to the output's scale (|o| is up to ~8 here)
        assert err <= 1e-5 * max(1.0, want.abs().max().item())
    if finite.any():
        cos = F.cosine_similarity(o.to(F64)[finite].flatten(), want[finite].flatten(), dim=0)
        assert cos > 0.99999, cos


# (B, Tq, H, R, Dr, lens, page_size, num_splits): lengths 0, 1 and odd, a row shorter than Tq; H = 1, 16, 128;
# R = 256, 512; contiguous caches and pages of 16, 48 and 64 tokens; one split and several (more than some rows
# have key blocks, so some splits are empty).
CASES = [
    (4, 1, 16, 512, 64, [0, 1, 37, 100], 16, 1),
    (3, 4, 16, 256, 64, [4, 1, 67], 64, 3),
    (2, 1, 128, 512, 64, [5, 33], 48, 2),
    (3, 4, 1, 256, 64, [1, 0, 97], None, 5),
    (2, 4, 16, 512, 64, [9, 71], None, 1),
]


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("B,Tq,H,R,Dr,lens,page_size,num_splits", CASES)
def test_matches_fp64_reference(B, Tq, H, R, Dr, lens, page_size, num_splits, dtype):
    q, cache, seqlens, table, clean = make_inputs(B, Tq, H, R, Dr, lens, page_size, DTYPES[dtype])
    scale = 192**-0.5  # the caller's scale (un-absorbed head dim), not 1 / sqrt(R + Dr)
    o, lse = mla.mla_decode(
        q, cache, seqlens, kv_lora_rank=R, softmax_scale=scale, block_table=table, num_splits=num_splits
    )
    check_against_oracle(o, lse, q, clean, lens, R, scale)


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_public_op_with_split_heuristic(dtype):
    """Through `fastllm.kernels.mla_decode` (custom op, dispatch forced to Triton): the heuristic picks the splits."""
    B, Tq, H, R, Dr, lens = 2, 2, 16, 512, 64, [300, 129]
    q, pool, seqlens, table, clean = make_inputs(B, Tq, H, R, Dr, lens, 64, DTYPES[dtype])
    assert mla.num_splits_for(B, H * Tq, table.shape[1] * 64, mla.DEFAULT_SMS) == 1  # 320 slots: one 256-key split
    o, lse = K.mla_decode(q, pool, seqlens, kv_lora_rank=R, softmax_scale=0.08, block_table=table)
    check_against_oracle(o, lse, q, clean, lens, R, 0.08)


def test_split_heuristic():
    sms = 132
    assert mla.num_splits_for(1, 16, 8192, sms) == 32  # 1 program: ~2 per SM wants 264 splits; 256 keys each
    assert mla.num_splits_for(1, 16, 100_000, sms) == mla.MAX_SPLITS
    assert mla.num_splits_for(4, 128, 8192, sms) == 9  # 32 programs (8 row blocks per batch row)
    assert mla.num_splits_for(256, 16, 8192, sms) == 1  # the batch alone fills the SMs
    assert mla.num_splits_for(2, 16, 100, sms) == 1  # too short to split
    assert mla.num_splits_for(1, 16, 512, sms) == 2  # >= 256 keys per split


def test_absorbed_kernel_equals_decompressed_attention():
    """The kernel in fp32 against per-head decompressed K/V (q_nope . W_UK c + q_rope . k_rope, softmax, W_UV c)."""
    B, Tq, H, Dn, Dr, Dv, R, lens = 2, 4, 16, 32, 64, 48, 256, [45, 4]
    _, pool, seqlens, table, clean = make_inputs(B, Tq, H, R, Dr, lens, 16)
    w_uk, w_uv = torch.randn(H, Dn, R, dtype=F64) * R**-0.5, torch.randn(H, Dv, R, dtype=F64) * R**-0.5
    q_nope, q_rope = torch.randn(B, Tq, H, Dn, dtype=F64), torch.randn(B, Tq, H, Dr, dtype=F64)
    scale = (Dn + Dr) ** -0.5
    want, want_lse = ref.mla_decode_naive(
        q_nope, q_rope, clean.to(F64), seqlens, w_uk=w_uk, w_uv=w_uv, softmax_scale=scale
    )
    q = torch.cat([torch.einsum("bthd,hdr->bthr", q_nope, w_uk), q_rope], dim=-1).float()  # (B, Tq, H, R + Dr)
    o_lat, lse = mla.mla_decode(q, pool, seqlens, kv_lora_rank=R, softmax_scale=scale, block_table=table, num_splits=2)
    got = torch.einsum("bthr,hvr->bthv", o_lat.to(F64), w_uv)  # (B, Tq, H, Dv)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    torch.testing.assert_close(lse, want_lse, atol=1e-5, rtol=0)
    assert F.cosine_similarity(got.flatten(), want.flatten(), dim=0) > 0.99999


def test_bad_arguments_are_named(monkeypatch):
    q, pool, seqlens, table, _ = make_inputs(2, 1, 2, 64, 16, [10, 20], 16)
    ok = dict(kv_lora_rank=64, softmax_scale=0.1, block_table=table)

    def fails(match, *args, **kwargs):
        args = args or (q, pool, seqlens)
        with pytest.raises(ValueError, match=match):
            mla.mla_decode(*args, **{**ok, **kwargs})

    fails(r"kv_cache dtype torch.float16 differs from q dtype torch.float32", q, pool.half(), seqlens)
    fails(r"float32, float16 or bfloat16, got torch.float64", q.double(), pool.double(), seqlens)
    fails(r"kv_lora_rank must be in 1..512 .* got kv_lora_rank=8 for q.shape\[-1\]=80", kv_lora_rank=8)
    fails(r"kv_cache rows hold 80 values, q has 96", torch.randn(2, 1, 2, 96), pool, seqlens)
    fails(r"contiguous last dim", q.transpose(-1, -2).contiguous().transpose(-1, -2), pool, seqlens)
    fails(r"softmax_scale must be a finite float, got nan", softmax_scale=math.nan)
    fails(r"cache_seqlens must be \(B,\) with B=2, got \(3,\)", q, pool, torch.tensor([1, 2, 3]))
    fails(r"cache_seqlens must be int32 or int64, got torch.float32", q, pool, seqlens.float())
    fails(r"block_table must be int32 or int64", block_table=table.float())
    fails(r"page_size \(kv_cache.shape\[1\]\) must be a positive multiple of 16, got 8", q, pool[:, :8], seqlens)
    fails(r"cache_seqlens must be in 0..32 \(max_pages \* page_size\), got \[10, 33\]", q, pool, torch.tensor([10, 33]))
    bad = table.clone()
    bad[1, 1] = pool.shape[0]
    fails(r"block_table names pages outside the pool of 9 \(row, pages\): \[\(1, \[\d+, 9\]\)\]", block_table=bad)
    fails(r"contiguous kv_cache must be \(B=2, S, 80\)", q, torch.randn(3, 20, 80), seqlens, block_table=None)
    fails(r"num_splits must be an int in 1..64, got 0", num_splits=0)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    fails(r"on CUDA \(or on the CPU with TRITON_INTERPRET=1\), got cpu")


@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
def test_torch_compile_fullgraph(backend):
    torch._dynamo.reset()
    q, pool, seqlens, table, _ = make_inputs(2, 1, 16, 256, 64, [40, 3], 16)

    def step(q, pool, seqlens, table):
        o, lse = K.mla_decode(q, pool, seqlens, kv_lora_rank=256, softmax_scale=0.1, block_table=table)
        return o * 2, lse

    got = torch.compile(step, fullgraph=True, backend=backend)(q, pool, seqlens, table)
    for a, b in zip(got, step(q, pool, seqlens, table)):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


@torch.no_grad()
def test_swa_mla_model_generates_the_same_greedy_tokens(monkeypatch):
    """An SWA-MLA model (the 262M preset's latent dims R=256, Dr=64, Dn=Dv=128; narrow, 3 layers, random weights)
    decodes the same greedy tokens with the Triton MLA kernel (interpreted) as with the reference.

    Only mla_decode runs through Triton here (dispatch "auto" with just its launcher registered), so the test checks
    this kernel alone; prefill and every other op use their references on both sides.
    """
    cfg = ModelConfig.from_name("swa-mla-262m", n_layer=3, d_model=64, n_head=2, vocab_size=101, max_seq_len=64)
    model = Transformer(cfg).eval()
    for p in model.parameters():
        p.add_(0.5 * p.std() * torch.randn_like(p))  # away from init, where attention is near uniform
    prompts = [torch.randint(0, 101, (n,)) for n in (5, 11)]  # rows at different lengths in one latent cache
    greedy = engine.SamplingParams(temperature=0.0)
    monkeypatch.setenv("FASTLLM_KERNELS", "reference")
    want, _ = engine.generate(model, prompts, 8, sampling=greedy)

    calls = []

    def counted(*args, **kwargs):
        calls.append(args[0].shape)
        return mla.mla_decode(*args, **kwargs)

    _dispatch.triton_status()  # loads every launcher first, so that none registers into the dict patched below
    monkeypatch.setattr(_dispatch, "_TRITON_OPS", {"mla_decode": counted})
    monkeypatch.setenv("FASTLLM_KERNELS", "auto")
    got, _ = engine.generate(model, prompts, 8, sampling=greedy)
    assert got == want
    assert len(calls) == 7 and calls[0] == (2, 1, 2, 256 + 64)  # one MLA layer, 7 decode steps after the prefill
