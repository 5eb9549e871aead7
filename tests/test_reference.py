"""Eager reference ops, the public dispatch and the torch.library registrations, against independent oracles.

Oracles: fp64 SDPA with an explicit (T, S) additive mask built from the definition in DESIGN.md (attention, ring
decode), per-head decompressed K/V (MLA), F.silu/F.gelu * up with autograd (GLU), and for sampling an fp64
per-row filter written with Python loops plus multinomial statistics.
"""

import math

import pytest
import torch
import torch.nn.functional as F

import fastllm.kernels as K
from fastllm.kernels import _dispatch
from fastllm.kernels import reference as ref
from fastllm.kernels.reference.glu import glu_backward
from fastllm.kernels.reference.sampling import apply_repetition_penalty

F64 = torch.float64


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def rand(*shape, dtype=F64, grad=False):
    return torch.randn(*shape, dtype=dtype).requires_grad_(grad)


def dense_attention(q, k, v, window=None, *, scale=None, alibi=None, rel_bias=None, sink=0, cu_seqlens=None):
    """SDPA over the full (T, S) grid with an explicit mask: query t at S - T + t, positions local to a document."""
    B, T, H, D = q.shape
    S, G = k.shape[1], H // k.shape[2]
    start = torch.zeros(S, dtype=torch.int64)
    if cu_seqlens is not None:
        for a, b in zip(cu_seqlens.tolist(), cu_seqlens.tolist()[1:]):
            start[a:b] = a
    j, p = torch.arange(S), S - T + torch.arange(T)
    d = (p - start[p])[:, None] - (j - start[j])[None, :]
    ok = (start[p][:, None] == start[j][None, :]) & (d >= 0)
    if window is not None:
        ok &= (d < window) | ((j - start[j]) < sink)[None, :]
    bias = torch.zeros(H, T, S, dtype=q.dtype)
    if alibi is not None:
        bias = bias - alibi[:, None, None] * d
    if rel_bias is not None:
        bias = bias + rel_bias[:, d.clamp(0, rel_bias.shape[1] - 1)]
    bias = bias.masked_fill(~ok, -math.inf)
    kh, vh = (x.repeat_interleave(G, dim=2).transpose(1, 2) for x in (k, v))
    return F.scaled_dot_product_attention(q.transpose(1, 2), kh, vh, attn_mask=bias, scale=scale).transpose(1, 2)


# (T, S, H, Hkv, D, Dv, window, sink): T=1, 2, 97, 130; windows 1, 17, > T, None; GQA 1, 4, all heads; D 32/80/96-64
ATTN_CASES = [
    (1, 1, 2, 2, 32, 32, None, 0),
    (2, 2, 4, 1, 32, 32, 1, 0),
    (97, 97, 4, 1, 80, 80, 17, 4),
    (130, 130, 8, 2, 32, 32, 17, 0),
    (130, 130, 4, 4, 96, 64, None, 4),
    (97, 97, 4, 4, 32, 32, 200, 4),
    (2, 130, 4, 1, 96, 64, 17, 4),
    (97, 130, 8, 2, 80, 80, 1, 4),
    (130, 130, 2, 1, 32, 32, 64, 0),
    (1, 97, 8, 8, 32, 32, 17, 4),
    (33, 130, 4, 2, 32, 64, None, 0),
]


@pytest.mark.parametrize("bias", ["none", "alibi", "rel", "both"])
@pytest.mark.parametrize("T,S,H,Hkv,D,Dv,window,sink", ATTN_CASES)
def test_swa_forward_and_grads_match_dense(T, S, H, Hkv, D, Dv, window, sink, bias):
    q, k, v = rand(2, T, H, D, grad=True), rand(2, S, Hkv, D, grad=True), rand(2, S, Hkv, Dv, grad=True)
    alibi = torch.rand(H, dtype=F64) * 0.3 if bias in ("alibi", "both") else None
    rel = rand(H, 9, grad=True) if bias in ("rel", "both") else None
    kw = dict(alibi_slopes=alibi, rel_bias=rel, sink_tokens=sink, softmax_scale=0.7)
    want = dense_attention(q, k, v, window, scale=0.7, alibi=alibi, rel_bias=rel, sink=sink)
    go = torch.randn_like(want)
    inputs = [x for x in (q, k, v, rel) if x is not None]
    want_g = torch.autograd.grad(want, inputs, go)
    for fn in (K.sliding_window_attention, lambda *a, **kw: ref.sliding_window_attention(*a, block_q=16, **kw)):
        got = fn(q, k, v, window, **kw)  # public op (explicit backward) and reference (autograd through blocks)
        torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-10)
        for g, w in zip(torch.autograd.grad(got, inputs, go), want_g):
            torch.testing.assert_close(g, w, atol=1e-11, rtol=1e-9)


@pytest.mark.parametrize("dtype,atol", [(torch.float32, 2e-6), (torch.bfloat16, None)])
def test_swa_low_precision(dtype, atol):
    q, k, v = rand(1, 130, 4, 64), rand(1, 130, 2, 64), rand(1, 130, 2, 64)
    rel = rand(4, 33)
    want = dense_attention(q, k, v, 33, rel_bias=rel, sink=4)
    got = K.sliding_window_attention(q.to(dtype), k.to(dtype), v.to(dtype), 33, rel_bias=rel.float(), sink_tokens=4)
    assert got.dtype == dtype
    err = (got.double() - want).abs().max().item()
    if atol is None:  # at most 2x the error of the same-precision PyTorch computation
        lowp = dense_attention(q.to(dtype), k.to(dtype), v.to(dtype), 33, rel_bias=rel.to(dtype), sink=4)
        atol = 2 * (lowp.double() - want).abs().max().item()
    assert err <= atol, (err, atol)


def test_swa_cu_seqlens_documents():
    lens = [5, 1, 40, 17, 2, 65]
    cu = torch.tensor([0] + torch.tensor(lens).cumsum(0).tolist(), dtype=torch.int32)
    T = sum(lens)
    q, k, v, rel = (rand(*shape, grad=True) for shape in [(1, T, 4, 32), (1, T, 2, 32), (1, T, 2, 16), (4, 6)])
    alibi = torch.rand(4, dtype=F64)
    for window, sink in [(None, 0), (7, 2), (1, 0), (20, 4)]:
        kw = dict(alibi_slopes=alibi, rel_bias=rel, sink_tokens=sink, cu_seqlens=cu)
        want = dense_attention(q, k, v, window, alibi=alibi, rel_bias=rel, sink=sink, cu_seqlens=cu)
        got = K.sliding_window_attention(q, k, v, window, **kw)
        torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-10)
        go = torch.randn_like(want)
        for g, w in zip(torch.autograd.grad(got, (q, k, v, rel), go), torch.autograd.grad(want, (q, k, v, rel), go)):
            torch.testing.assert_close(g, w, atol=1e-11, rtol=1e-9)


def test_swa_fully_masked_rows_are_zero_not_nan():
    q, k, v, rel = rand(1, 20, 2, 8, grad=True), rand(1, 20, 2, 8, grad=True), rand(1, 20, 2, 8), rand(2, 4)
    rel[1] = -math.inf  # head 1 sees nothing
    o = K.sliding_window_attention(q, k, v, 5, rel_bias=rel)
    assert torch.isfinite(o).all() and (o[:, :, 1] == 0).all() and (o[:, :, 0] != 0).all()
    o.sum().backward()
    assert torch.isfinite(q.grad).all() and torch.isfinite(k.grad).all()


def test_swa_long_sequence_is_banded():
    """T = S = 2^14 with W = 32: a T x S score matrix would be 1 GiB per head; the banded reference is fast."""
    T, W, sink = 1 << 14, 32, 4
    q, k, v = (rand(1, T, 1, 16, dtype=torch.float32) for _ in range(3))
    o = K.sliding_window_attention(q, k, v, W, sink_tokens=sink)
    keys = torch.cat([torch.arange(sink), torch.arange(T - 50 - W, T)])  # sinks + all keys the last 50 queries see
    want = dense_attention(q[:, -50:].double(), k[:, keys].double(), v[:, keys].double(), W, sink=sink)
    # the slice loses the true gap between sinks and band, which the window already masks except for the sinks
    torch.testing.assert_close(o[:, -50:].double(), want, atol=1e-5, rtol=1e-5)


def fill_ring(x_full, lens, C, sink):
    """Write each row's first lens[b] positions into a (B, C, ...) ring per DESIGN.md; unwritten slots stay NaN."""
    cache = torch.full((x_full.shape[0], C, *x_full.shape[2:]), math.nan, dtype=x_full.dtype)
    for b, n in enumerate(lens):
        for s in range(n):
            cache[b, s if s < sink else sink + (s - sink) % (C - sink)] = x_full[b, s]
    return cache


@pytest.mark.parametrize("Tq", [1, 4, 8])
@pytest.mark.parametrize("window,sink,H,Hkv", [(1, 0, 4, 4), (17, 4, 8, 2), (16, 0, 4, 1), (40, 4, 2, 2)])
def test_swa_decode_ring_matches_full_attention(Tq, window, sink, H, Hkv):
    C = window + sink + Tq - 1 + 3
    lens = [Tq, C - 2, 5 * C + 3, 3 * C]  # not wrapped, wrapped several times
    B, Lmax = len(lens), max(lens)
    k, v = rand(B, Lmax, Hkv, 32), rand(B, Lmax, Hkv, 24)
    q, alibi, rel = rand(B, Tq, H, 32), torch.rand(H, dtype=F64), rand(H, 11)
    got = K.swa_decode(
        q,
        fill_ring(k, lens, C, sink),
        fill_ring(v, lens, C, sink),
        torch.tensor(lens, dtype=torch.int32),
        window,
        sink_tokens=sink,
        alibi_slopes=alibi,
        rel_bias=rel,
    )
    for b, n in enumerate(lens):
        want = dense_attention(
            q[b : b + 1], k[b : b + 1, :n], v[b : b + 1, :n], window, alibi=alibi, rel_bias=rel, sink=sink
        )
        torch.testing.assert_close(got[b : b + 1], want, atol=1e-12, rtol=1e-10)


def test_swa_decode_short_rows_and_bad_capacity():
    k, v, q = rand(2, 8, 1, 4), rand(2, 8, 1, 4), rand(2, 3, 1, 4)
    o = K.swa_decode(q, k, v, torch.tensor([0, 2]), 4)  # queries at negative positions output zeros
    assert (o[0] == 0).all() and (o[1, 0] == 0).all() and torch.isfinite(o).all() and (o[1, 1:] != 0).all()
    with pytest.raises(ValueError, match="C >= window"):
        K.swa_decode(q, k, v, torch.tensor([20, 20]), 7)


def paged(kv_contig, lens, page_size, n_pages):
    """Scatter a contiguous (B, S, Dt) cache into a NaN-poisoned pool with a random permuted block table."""
    B, S, Dt = kv_contig.shape
    max_pages = -(-S // page_size)
    perm = torch.randperm(n_pages)[: B * max_pages].view(B, max_pages).to(torch.int32)
    pool = torch.full((n_pages, page_size, Dt), math.nan, dtype=kv_contig.dtype)
    for b, n in enumerate(lens):
        for s in range(n):  # only valid tokens are written: the tail of the last page and unused pages stay NaN
            pool[perm[b, s // page_size], s % page_size] = kv_contig[b, s]
    return pool, perm


@pytest.mark.parametrize("H,R,Tq,ps", [(1, 256, 1, 16), (16, 512, 4, 64), (128, 512, 1, 16), (16, 256, 4, 32)])
def test_mla_absorbed_matches_naive(H, R, Tq, ps):
    Dn, Dr, Dv = 32, 64, 48
    lens = [0, 1, 37, 64, 5] if Tq == 1 else [0, 4, 37, 64, 5]
    B, S = len(lens), 64
    kv = rand(B, S, R + Dr) * 0.3
    w_uk, w_uv = rand(H, Dn, R) * R**-0.5, rand(H, Dv, R) * R**-0.5
    q_nope, q_rope = rand(B, Tq, H, Dn), rand(B, Tq, H, Dr)
    q_abs = torch.cat([torch.einsum("bthd,hdr->bthr", q_nope, w_uk), q_rope], dim=-1)  # (B, Tq, H, R + Dr)
    scale, seqlens = (Dn + Dr) ** -0.5, torch.tensor(lens, dtype=torch.int32)
    pool, table = paged(kv, lens, ps, 3 * B * S // ps)
    want, want_lse = ref.mla_decode_naive(q_nope, q_rope, kv, seqlens, w_uk=w_uk, w_uv=w_uv, softmax_scale=scale)
    for cache, bt in [(kv, None), (pool, table)]:
        o_lat, lse = K.mla_decode(q_abs, cache, seqlens, kv_lora_rank=R, softmax_scale=scale, block_table=bt)
        got = torch.einsum("bthr,hvr->bthv", o_lat, w_uv)
        assert o_lat.shape == (B, Tq, H, R) and lse.dtype == torch.float32 and torch.isfinite(o_lat).all()
        torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-10)
        torch.testing.assert_close(lse, want_lse, atol=1e-5, rtol=1e-6)
        assert F.cosine_similarity(got[1:].flatten(), want[1:].flatten(), dim=0) > 0.99999
        assert (o_lat[0] == 0).all() and (lse[0] == -math.inf).all()
    n = lens[2]  # independent check of one row: plain softmax over the decompressed keys
    k = torch.cat([torch.einsum("hdr,sr->shd", w_uk, kv[2, :n, :R]), kv[2, :n, None, R:].expand(n, H, Dr)], -1)
    s = torch.einsum("thd,shd->ths", torch.cat([q_nope[2], q_rope[2]], -1), k) * scale
    s = s.masked_fill(torch.arange(n)[None, None] > (n - Tq + torch.arange(Tq))[:, None, None], -math.inf)
    torch.testing.assert_close(
        want[2],
        torch.einsum("ths,hvs->thv", s.softmax(-1), torch.einsum("hvr,sr->hvs", w_uv, kv[2, :n, :R])),
        atol=1e-12,
        rtol=1e-10,
    )


@pytest.mark.parametrize("activation", ["silu", "gelu", "gelu_tanh"])
@pytest.mark.parametrize("shape", [(1,), (3, 97), (2, 5, 111)])
def test_glu_matches_torch(activation, shape):
    act = {"silu": F.silu, "gelu": F.gelu, "gelu_tanh": lambda x: F.gelu(x, approximate="tanh")}[activation]
    g, u = rand(*shape, grad=True), rand(*shape, grad=True)
    want = act(g) * u
    got = K.glu(g, u, activation)
    torch.testing.assert_close(got, want, atol=1e-14, rtol=1e-12)
    go = torch.randn_like(want)
    want_g = torch.autograd.grad(want, (g, u), go)
    for a, b in zip(torch.autograd.grad(got, (g, u), go), want_g):
        torch.testing.assert_close(a, b, atol=1e-13, rtol=1e-11)
    for gate_first in (True, False):
        x = torch.cat([g, u] if gate_first else [u, g], -1).detach().requires_grad_()
        got = K.glu_packed(x, activation, gate_first=gate_first)
        torch.testing.assert_close(got, want, atol=1e-14, rtol=1e-12)
        (dx,) = torch.autograd.grad(got, x, go)
        want_dx = torch.cat(want_g[:: 1 if gate_first else -1], -1)
        torch.testing.assert_close(dx, want_dx, atol=1e-13, rtol=1e-11)
    for dtype in (torch.float32, torch.bfloat16):  # fp32 math, one rounding to the output dtype
        out = K.glu(g.detach().to(dtype), u.detach().to(dtype), activation)
        exact = act(g.detach().to(dtype).double()) * u.detach().to(dtype).double()
        torch.testing.assert_close(out, exact.to(dtype), atol=1e-6 if dtype == torch.float32 else 0, rtol=1e-6)
        dg, du = glu_backward(go.to(dtype), g.detach().to(dtype), u.detach().to(dtype), activation)
        assert dg.dtype == du.dtype == dtype


def oracle_probs(row, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, repetition_penalty=1.0, prev=()):
    """Filtered, renormalised fp64 distribution of one row written from the definitions with plain loops."""
    z = row.double().clone()
    for t in set(int(i) for i in prev if i >= 0):
        z[t] = z[t] / repetition_penalty if z[t] > 0 else z[t] * repetition_penalty
    if temperature == 0:
        return F.one_hot(z.argmax(), len(z)).double()
    z = z / temperature
    if 0 < top_k < len(z):
        z[z < sorted(z.tolist(), reverse=True)[top_k - 1]] = -math.inf
    p = z.softmax(0)
    if top_p < 1:
        cum, last = 0.0, None
        for i in sorted(range(len(p)), key=lambda i: -p[i].item()):
            last, cum = p[i].item(), cum + p[i].item()
            if cum >= top_p:
                break
        p[p < last] = 0
    p[p < min_p * p.max()] = 0
    return p / p.sum()


SAMPLING = [
    dict(temperature=0.7, top_k=5),
    dict(temperature=1.3, top_p=0.8),
    dict(min_p=0.1),
    dict(temperature=0.9, top_k=8, top_p=0.9, min_p=0.05, repetition_penalty=1.5),
]


@pytest.mark.parametrize("params", SAMPLING)
def test_sample_frequencies_and_support(params):
    V, N = 13, 200_000
    row = torch.randn(V) * 2
    prev = torch.tensor([[1, 4, 4, -1, 7]])
    p = oracle_probs(row, prev=prev[0], **params)
    ids = K.sample(
        row.expand(N, V), prev_tokens=prev.expand(N, -1), generator=torch.Generator().manual_seed(1), **params
    )
    freq = torch.bincount(ids, minlength=V).double() / N
    drawn = set(ids.unique().tolist())
    assert drawn <= set(torch.nonzero(p).flatten().tolist())  # never outside the filtered support
    assert set(torch.nonzero(p > 1e-3).flatten().tolist()) <= drawn
    assert F.cosine_similarity(freq, p, dim=0) > 0.99
    assert (freq - p).abs().max() < 5 * (p * (1 - p) / N).sqrt().max() + 1e-9
    multi = torch.bincount(torch.multinomial(p, N, replacement=True), minlength=V).double() / N
    assert (freq - p).abs().max() < 3 * (multi - p).abs().max() + 2e-3


def test_sample_per_row_params_greedy_and_ties():
    B, V = 6, 11
    logits = torch.randn(B, V) * 3
    logits[3, [2, 5, 9]] = 10.0  # three-way tie at the top: top_k=2 keeps all three
    temp, top_k = torch.tensor([0.0, 0.5, 1.0, 1.0, 0.0, 2.0]), torch.tensor([0, 3, 0, 2, 1, 50])
    top_p, min_p = torch.tensor([1.0, 1.0, 0.6, 1.0, 0.5, 1.0]), torch.tensor([0.0, 0.0, 0.0, 0.0, 0.0, 0.2])
    kw = dict(temperature=temp, top_k=top_k, top_p=top_p, min_p=min_p)
    probs = ref.sampling_probs(logits, temp, top_k, top_p, min_p, torch.ones(B))
    for b in range(B):
        want = oracle_probs(logits[b], temp[b].item(), top_k[b].item(), top_p[b].item(), min_p[b].item())
        torch.testing.assert_close(probs[b].double(), want, atol=1e-6, rtol=1e-5)
    assert (probs[3, [2, 5, 9]] > 0.3).all()
    draws = torch.stack([K.sample(logits, generator=torch.Generator().manual_seed(s), **kw) for s in range(300)])
    assert (draws[:, 0] == logits[0].argmax()).all() and (draws[:, 4] == logits[4].argmax()).all()
    assert (torch.gather(probs, 1, draws.T) > 0).all()
    assert set(draws[:, 3].tolist()) == {2, 5, 9}
    assert torch.equal(K.sample(logits, temperature=0.0), logits.argmax(-1))


def test_sample_reproducible_and_reference_agrees():
    logits = torch.randn(4, 50)
    a = K.sample(logits, top_p=0.9, generator=torch.Generator().manual_seed(7))
    b = K.sample(logits, top_p=0.9, generator=torch.Generator().manual_seed(7))
    c = ref.sample(logits, top_p=0.9, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b) and torch.equal(a, c)
    draws = {tuple(K.sample(logits, generator=torch.Generator().manual_seed(s)).tolist()) for s in range(20)}
    assert len(draws) > 1


def test_sample_repetition_penalty_convention():
    logits = torch.tensor([[2.0, -1.0, 0.5, 3.0], [1.0, 1.0, -2.0, 0.0]])
    prev = torch.tensor([[3, 1, 1, -1], [2, -1, -1, -1]])
    pen = torch.tensor([2.0, 4.0])
    want = torch.tensor([[2.0, -2.0, 0.5, 1.5], [1.0, 1.0, -8.0, 0.0]])  # seen: 3, 1 (once) | 2; -1 is padding
    torch.testing.assert_close(apply_repetition_penalty(logits, prev, pen), want)
    assert K.sample(logits, temperature=0, repetition_penalty=pen, prev_tokens=prev).tolist() == [0, 0]


def test_sample_edge_cases():
    logits = torch.randn(3, 7)
    g = torch.Generator().manual_seed(3)
    ids = K.sample(logits, top_k=0, top_p=1.0, generator=g)
    assert torch.equal(ids, K.sample(logits, top_k=100, generator=torch.Generator().manual_seed(3)))
    assert torch.equal(K.sample(logits, top_k=1, generator=g), logits.argmax(-1))
    assert torch.equal(K.sample(logits, top_p=0.0, generator=g), logits.argmax(-1))
    bad = logits.clone()
    bad[1, 2] = math.nan
    with pytest.raises(ValueError, match="NaN"):
        K.sample(bad)
    bad[1] = -math.inf
    with pytest.raises(ValueError, match="every logit is -inf in rows \\[1\\]"):
        K.sample(bad)
    with pytest.raises(ValueError, match="top_p"):
        K.sample(logits, top_p=1.5)
    partial = torch.full((1, 5), -math.inf)
    partial[0, 3] = 0.0  # a single finite token is always drawn
    assert K.sample(partial, top_k=3).item() == 3


def test_dispatch_override_and_registry(monkeypatch):
    x = torch.randn(4, 6)
    monkeypatch.delenv("FASTLLM_KERNELS", raising=False)
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # no Triton kernel registered: the reference still runs
    monkeypatch.setattr(_dispatch, "_TRITON_OPS", {})
    monkeypatch.setattr(_dispatch, "_triton_state", (True, ""))  # as if Triton imported (no kernel package)
    assert K.backend_for("glu", x.device) == "reference"
    torch.testing.assert_close(K.glu(x, x), F.silu(x) * x)
    monkeypatch.setenv("FASTLLM_KERNELS", "triton")
    with pytest.raises(NotImplementedError, match="Triton kernel for glu is not implemented yet"):
        K.glu(x, x)
    calls = []
    _dispatch.register_triton("glu")(lambda g, u, a: calls.append(a) or g * 0)
    assert K.backend_for("glu", x.device) == "triton" and (K.glu(x, x) == 0).all() and calls == ["silu"]
    monkeypatch.delenv("TRITON_INTERPRET")
    with pytest.raises(RuntimeError, match="CUDA"):
        K.glu(x, x)  # forced Triton on CPU tensors without the interpreter
    monkeypatch.setenv("FASTLLM_KERNELS", "reference")
    torch.testing.assert_close(K.glu(x, x), F.silu(x) * x)
    monkeypatch.delenv("FASTLLM_KERNELS")
    assert K.backend_for("glu", x.device) == "reference"  # CPU tensors without the interpreter
    monkeypatch.setenv("FASTLLM_KERNELS", "triton")
    monkeypatch.setattr(_dispatch, "_triton_state", (False, "import triton failed: ModuleNotFoundError"))
    with pytest.raises(RuntimeError, match="Triton cannot be used"):
        K.glu(x, x)
    monkeypatch.setenv("FASTLLM_KERNELS", "cuda")
    with pytest.raises(ValueError, match="FASTLLM_KERNELS"):
        K.glu(x, x)


def test_opcheck_registrations():
    q, k, v, rel = (rand(*shape, grad=True) for shape in [(1, 9, 4, 8), (1, 9, 2, 8), (1, 9, 2, 8), (4, 3)])
    decode = (rand(2, 2, 4, 8), rand(2, 8, 2, 8), rand(2, 8, 2, 8), torch.tensor([3, 12]), 4, 0.3, 1, None, None)
    params = (torch.ones(2), torch.tensor([0, 3]), torch.full((2,), 0.9), torch.zeros(2), torch.ones(2))
    ops = torch.ops.fastllm
    cases = [
        (ops.sliding_window_attention, (q, k, v, 3, 0.5, None, rel, 1, None)),
        (ops.glu, (rand(3, 5, grad=True), rand(3, 5, grad=True), "gelu_tanh")),
        (ops.glu_packed, (rand(3, 10, grad=True), "silu", False)),
        (ops.swa_decode, decode),
        (ops.mla_decode, (rand(2, 1, 4, 24), rand(2, 9, 24), torch.tensor([0, 9], dtype=torch.int32), 16, 0.2, None)),
        (ops.sample_from_noise, (torch.randn(2, 7), torch.rand(2, 7), *params, None)),
    ]
    for op, args in cases:
        torch.library.opcheck(op, args)


class Tiny(torch.nn.Module):
    def __init__(self, d=16, heads=4):
        super().__init__()
        self.heads = heads
        self.qkv, self.up, self.down = torch.nn.Linear(d, 3 * d), torch.nn.Linear(d, 2 * d), torch.nn.Linear(d, d)
        self.rel = torch.nn.Parameter(torch.randn(heads, 6) * 0.1)

    def forward(self, x):
        B, T, d = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.heads, d // self.heads).unbind(2)
        h = x + K.sliding_window_attention(q, k, v, 5, rel_bias=self.rel, sink_tokens=1).reshape(B, T, d)
        g, u = self.up(h).chunk(2, -1)
        return h + self.down(K.glu_packed(self.up(h), "gelu_tanh", gate_first=False) + K.glu(g, u))


@pytest.mark.parametrize("backend", ["eager", "aot_eager", "inductor"])
def test_torch_compile_fullgraph(backend):
    torch._dynamo.reset()
    model, x = Tiny(), torch.randn(2, 11, 16)
    want = model(x)
    want_g = torch.autograd.grad(want.square().sum(), list(model.parameters()))
    got = torch.compile(model, fullgraph=True, backend=backend)(x)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    for a, b in zip(torch.autograd.grad(got.square().sum(), list(model.parameters())), want_g):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    if backend == "eager":  # decode ops and sampling trace too; sample takes generator=None under compile

        def step(logits, q, kv, lens, k_ring, v_ring):
            o, lse = K.mla_decode(q, kv, lens, kv_lora_rank=16, softmax_scale=0.3)
            o2 = K.swa_decode(q, k_ring, v_ring, lens, 3, sink_tokens=1)
            return K.sample(logits, temperature=0.0), K.sample(logits, temperature=0.8, top_p=0.9), o, lse, o2

        args = (torch.randn(2, 9), torch.randn(2, 1, 2, 24), torch.randn(2, 5, 24), torch.tensor([5, 2]))
        args += (torch.randn(2, 4, 1, 24), torch.randn(2, 4, 1, 8))
        torch.manual_seed(5)
        got = torch.compile(step, fullgraph=True, backend=backend)(*args)
        torch.manual_seed(5)  # the eager backend runs the same aten RNG calls, so even the draws agree
        for a, b in zip(got, step(*args)):
            torch.testing.assert_close(a, b)


@pytest.mark.parametrize("Hkv", [1, 2, 6])
@pytest.mark.parametrize("lengths", [[13], [13, 13], [1, 9, 13]])
@pytest.mark.parametrize("window", [None, 13, 40])
def test_decode_fast_path_matches_general(Hkv, lengths, window):
    """swa_decode's SDPA path (one query, unwrapped cache, every key inside the window) against the general masked
    path, which zero ALiBi slopes force without changing the scores."""
    torch.manual_seed(0)
    B, C, H, D = len(lengths), 16, 6, 8
    q = torch.randn(B, 1, H, D, dtype=torch.float64)
    k = torch.randn(B, Hkv, C, D, dtype=torch.float64).transpose(1, 2)  # the models' head-major cache layout
    v = torch.randn(B, Hkv, C, D, dtype=torch.float64).transpose(1, 2)
    L = torch.tensor(lengths, dtype=torch.int32)
    for b, n in enumerate(lengths):
        k[b, n:], v[b, n:] = float("nan"), float("nan")  # never-written slots must not leak
    fast = ref.swa_decode(q, k, v, L, window)
    general = ref.swa_decode(q, k, v, L, window, alibi_slopes=torch.zeros(H, dtype=torch.float64))
    torch.testing.assert_close(fast, general, atol=1e-12, rtol=0)


# ---- sampling fast path ----
# The candidate path (`_plan`: top-k via torch.topk, top-p alone via the most likely tokens) against the general
# definition `_filter` over whole rows: the same probabilities and kept set bit for bit, hence the same ids.

import fastllm.kernels.reference.sampling as S  # noqa: E402


def general_ids(logits, noise, params, prev):
    """The ids of the general path alone: `_filter` over whole rows, the race argmax over the vocabulary."""
    z, zt, greedy = S._scaled(logits, params[0], params[4], prev)
    probs, keep = S._filter(zt, *params[1:4])
    race = torch.where(keep, probs / -torch.log(noise.to(probs.dtype)), torch.tensor(-1.0, dtype=probs.dtype))
    return torch.where(greedy, z.argmax(-1), race.argmax(-1))


def random_case(g, B, V):
    pick = lambda xs: torch.tensor([xs[i] for i in torch.randint(len(xs), (B,), generator=g)])  # noqa: E731
    kind = int(torch.randint(5, (1,), generator=g))
    logits = torch.randn(B, V, generator=g) * [0.5, 2.5, 8.0, 2.0, 2.0][kind]
    if kind == 3:
        logits = logits.round()  # few distinct values: cuts fall inside groups of ties
    if kind == 4:
        logits[:, ::3] = -math.inf  # a masked third of the vocabulary
        logits[0] = -math.inf
        logits[0, V // 2] = 1.0  # a single finite token
    params = (
        pick([0.0, 1e-30, 0.3, 0.8, 1.0, 1.7]).float(),
        pick([0, 1, 2, 7, 50, V - 1, V, V + 3, S.MAX_CANDIDATES - 1, S.MAX_CANDIDATES]),
        pick([1.0, 1.0, 0.0, 1e-6, 0.3, 0.9, 0.999, 0.9999999]).float(),
        pick([0.0, 0.0, 0.0, 0.05, 0.5, 1.0]).float(),
        pick([1.0, 1.3, 0.7]).float(),
    )
    prev = torch.randint(-1, V, (B, 24), generator=g)
    prev[:, :4] = prev[:, 4:8]  # duplicates are penalised once
    prev[:, -1] = 0  # token 0 seen, next to padding that points at it
    return logits, params, prev


@pytest.mark.parametrize("V", [97, 1500, 5003])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_sample_fast_path_equals_general_path(V, dtype):
    g = torch.Generator().manual_seed(V)
    fast_rows = 0
    for _ in range(25):
        logits, params, prev = random_case(g, 8, V)
        logits = logits.to(dtype)
        noise = torch.rand(logits.shape, generator=g)
        z, zt, greedy = S._scaled(logits, params[0], params[4], prev)
        probs, keep = S._filter(zt, *params[1:4])  # (B, V) the definition
        for rows, idx, p, k in S._plan(zt, *params[1:4], ~greedy):
            if idx is None:
                continue
            fast_rows += rows.numel()
            assert torch.equal(p, probs[rows].gather(1, idx)) and torch.equal(k, keep[rows].gather(1, idx))
            assert torch.equal(k.sum(-1), keep[rows].sum(-1)), "a kept token outside the candidates"
        assert torch.equal(S.sample_from_noise(logits, noise, *params, prev), general_ids(logits, noise, params, prev))
    assert fast_rows > 50  # the candidate paths were taken


def test_sample_fast_path_boundary_ties_fall_back():
    B, V = 4, 3000
    logits = torch.randn(B, V).clamp(max=3.0)
    for b, ties in enumerate([60, 60, 300, 1100]):
        logits[b, torch.randperm(V)[:ties]] = 5.0  # ties at the top, past every cut
    params = rows_params(B, top_k=[5, 50, 0, 0], top_p=[1.0, 0.9, 0.3, 0.95])
    zt = S._scaled(logits, params[0], params[4], None)[1]
    plan = S._plan(zt, *params[1:4], torch.ones(B, dtype=torch.bool))
    general = [g[0].tolist() for g in plan if g[1] is None]
    assert general == [[0, 1, 3]]  # row 2's 300 ties fit in the second try (1024 candidates)
    noise = torch.rand(B, V)
    assert torch.equal(S.sample_from_noise(logits, noise, *params, None), general_ids(logits, noise, params, None))


def rows_params(B, temperature=0.8, top_k=0, top_p=1.0, min_p=0.0, repetition_penalty=1.0):
    def col(v, dtype):
        return torch.as_tensor(v, dtype=dtype).expand(B).contiguous()

    floats = (temperature, top_p, min_p, repetition_penalty)
    t, p, m, rp = (col(v, torch.float32) for v in floats)
    return t, col(top_k, torch.int64), p, m, rp


@pytest.mark.parametrize("settings", [dict(top_k=40), dict(top_p=0.8), dict(top_k=30, top_p=0.9, min_p=0.05)])
def test_sample_philox_candidate_noise_distribution(settings):
    """Seeded draws (noise for the candidates only) follow `sampling_probs`: per-token frequencies within 5 sigma
    and a total-variation distance below the one of as many multinomial draws, plus 0.01."""
    N, V = 40_000, 4000
    row = torch.randn(V, generator=torch.Generator().manual_seed(11)) * 2
    prev = torch.tensor([[int(row.argmax()), 3, -1]])
    params = rows_params(N, repetition_penalty=1.2, **settings)
    p = S.sampling_probs(row[None], *(x[:1] for x in params), prev)[0].double()
    ids = S.sample_philox(row.expand(N, V), torch.tensor([5]), *params, prev.expand(N, -1))
    freq = torch.bincount(ids, minlength=V).double() / N
    assert bool((p[ids] > 0).all())  # never outside the filtered support
    assert (freq - p).abs().max() < 5 * (p * (1 - p) / N).sqrt().max() + 1e-9
    multi = torch.bincount(torch.multinomial(p, N, replacement=True), minlength=V).double() / N
    assert 0.5 * (freq - p).abs().sum() < 0.5 * (multi - p).abs().sum() + 0.01


def test_sample_philox_deterministic_per_seed():
    B, V = 5, 6000
    logits = torch.randn(B, V) * 2
    params = rows_params(B, top_k=[50, 0, 2000, 0, 7], top_p=[0.9, 0.8, 1.0, 1.0, 0.5])
    seeds = torch.tensor([3, 1, 4, 1, 5])
    a = S.sample_philox(logits, seeds, *params)
    assert torch.equal(a, S.sample_philox(logits, seeds, *params))
    for b in range(B):  # (B,) seeds: a row's draw depends on its own seed and logits only
        one = S.sample_philox(logits[b : b + 1], seeds[b : b + 1], *(x[b : b + 1] for x in params))
        assert one.item() == a[b].item()
    one_seed = torch.tensor([9])
    assert torch.equal(S.sample_philox(logits, one_seed, *params), S.sample_philox(logits, one_seed, *params))


def test_sample_fast_validation_errors():
    logits = torch.randn(3, 50)
    logits[0, :10] = -math.inf  # some -inf is fine
    K.sample(logits, top_k=5, generator=torch.Generator().manual_seed(0))
    bad = logits.clone()
    bad[2, 4] = math.inf
    with pytest.raises(ValueError, match="\\+inf \\(rows \\[2\\]\\)"):
        K.sample(bad, top_k=5)
    with pytest.raises(ValueError, match="prev_tokens holds id 50"):
        K.sample(logits, prev_tokens=torch.tensor([[1], [50], [2]]))
    with pytest.raises(ValueError, match="temperature must be >= 0 \\(rows \\[1\\]\\)"):
        K.sample(logits, temperature=torch.tensor([1.0, -1.0, 1.0]))
    with pytest.raises(ValueError, match="min_p"):
        K.sample(logits, min_p=torch.tensor([0.0, 0.0, math.nan]))


# ---- blocked 16-bit GLU on the CPU ----


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("activation", ["silu", "gelu", "gelu_tanh"])
def test_blocked_glu_equals_whole_tensor_arithmetic(dtype, activation):
    """The CPU reference computes 16-bit GLUs in fp32 one cache-sized row block at a time: the whole-tensor
    expression, forward and backward, up to one final rounding (torch's elementwise kernels may take a scalar tail
    instead of the vector body at other offsets, which moves the fp32 result by an ulp; odd sizes: the last block is
    partial)."""
    from fastllm.kernels.reference.glu import _BLOCK, activate, activate_grad

    torch.manual_seed(0)
    gate, up, grad = (torch.randn(3, 101, 1111).to(dtype) for _ in range(3))
    assert gate.numel() > _BLOCK
    g, u, go = gate.float(), up.float(), grad.float()
    one_rounding = dict(rtol=torch.finfo(dtype).eps, atol=torch.finfo(dtype).tiny)
    torch.testing.assert_close(ref.glu(gate, up, activation), (activate(g, activation) * u).to(dtype), **one_rounding)
    dgate, dup = glu_backward(grad, gate, up, activation)
    torch.testing.assert_close(dgate, (go * u * activate_grad(g, activation)).to(dtype), **one_rounding)
    torch.testing.assert_close(dup, (go * activate(g, activation)).to(dtype), **one_rounding)
