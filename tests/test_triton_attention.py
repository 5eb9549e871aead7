"""Triton sliding-window attention (forward and backward) under TRITON_INTERPRET=1 against the fp64 reference.

Accuracy rule (flash-attn's): against the reference run in fp64 on the same (rounded) inputs, the kernel's error may
be at most 2x (forward) or 3x (gradients) the error of plain PyTorch attention computed in the input dtype (dense
mask, softmax and matmuls in fp16/bf16, gradients by autograd). fp32 inputs get a tight tolerance relative to the
magnitude instead. The cases below cover T in {1, 2, 97, 130, 257}, windows {1, 17, 64, > T, None}, sinks {0, 4},
MHA / GQA 4 / MQA, packed documents (with empty and length-1 ones), chunked prefill (T < S), head dims 80 and
192 / 128, ALiBi and clipped rel_bias (R below and above the distances), all three dtypes.
"""

import math

import pytest
import torch

import fastllm.kernels as K
from fastllm.kernels import _dispatch
from fastllm.kernels.reference import attention as ref
from fastllm.kernels.triton import attention as tri

pytestmark = pytest.mark.triton

F64 = torch.float64
BF16 = torch.bfloat16


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def make_inputs(B, T, S, H, Hkv, D, Dv, dtype, *, alibi=False, R=0, cu=None):
    q = torch.randn(B, T, H, D).to(dtype)
    k = torch.randn(B, S, Hkv, D).to(dtype)
    v = torch.randn(B, S, Hkv, Dv).to(dtype)
    extra = dict(
        alibi_slopes=torch.rand(H) * 0.2 if alibi else None,
        rel_bias=torch.randn(H, R) if R else None,
        cu_seqlens=None if cu is None else torch.tensor(cu, dtype=torch.int32),
    )
    return q, k, v, extra


def reference_f64(q, k, v, window, do, *, sinks, extra):
    """fp64 forward (o, lse) and gradients (dq, dk, dv, drel) of the reference on the same inputs."""
    kw = dict(
        sink_tokens=sinks,
        cu_seqlens=extra["cu_seqlens"],
        alibi_slopes=None if extra["alibi_slopes"] is None else extra["alibi_slopes"].to(F64),
        rel_bias=None if extra["rel_bias"] is None else extra["rel_bias"].to(F64),
    )
    q, k, v, do = q.to(F64), k.to(F64), v.to(F64), do.to(F64)
    o, lse = ref.sliding_window_attention(q, k, v, window, return_lse=True, **kw)
    return (o, lse), ref.sliding_window_attention_backward(do, q, k, v, None, None, window, **kw)


def naive_attention(q, k, v, window, *, sinks, alibi_slopes, rel_bias, cu_seqlens):
    """Plain PyTorch attention in q's dtype: dense bias and mask, softmax and matmuls in that dtype."""
    B, T, H, _ = q.shape
    S, Hkv = k.shape[1], k.shape[2]
    if cu_seqlens is None:
        qpos, kpos = torch.arange(S - T, S), torch.arange(S)
        same_doc = torch.ones(T, S, dtype=torch.bool)
    else:
        starts = cu_seqlens.long()
        doc = torch.bucketize(torch.arange(T), starts[1:], right=True)  # (T,)
        qpos = kpos = torch.arange(T) - starts[doc]
        same_doc = doc[:, None] == doc[None, :]
    dist = qpos[:, None] - kpos[None, :]  # (T, S)
    mask = same_doc & (dist >= 0)
    if window is not None:
        mask &= (dist < window) | (kpos < sinks)[None, :]
    s = torch.einsum("bthd,bshd->bhts", q, k.repeat_interleave(H // Hkv, dim=2)) / math.sqrt(q.shape[-1])
    if alibi_slopes is not None:
        s = s - (alibi_slopes.to(q.dtype)[:, None, None] * dist.to(q.dtype))
    if rel_bias is not None:
        s = s + rel_bias.to(q.dtype)[:, dist.clamp(0, rel_bias.shape[1] - 1)]
    p = torch.softmax(s.masked_fill(~mask, float("-inf")), dim=-1)  # (B, H, T, S)
    return torch.einsum("bhts,bshd->bthd", p, v.repeat_interleave(H // Hkv, dim=2))


def naive_errors(q, k, v, window, do, *, sinks, extra, expected):
    """Max abs errors of naive_attention in q's dtype (o, dq, dk, dv, drel) against the fp64 results."""
    leaves = [x.detach().clone().requires_grad_() for x in (q, k, v)]
    rel = extra["rel_bias"]
    if rel is not None:
        leaves.append(rel.to(q.dtype).detach().clone().requires_grad_())
    o = naive_attention(
        *leaves[:3],
        window,
        sinks=sinks,
        alibi_slopes=extra["alibi_slopes"],
        rel_bias=leaves[3] if rel is not None else None,
        cu_seqlens=extra["cu_seqlens"],
    )
    o.backward(do)
    got = [o] + [x.grad for x in leaves] + ([] if rel is not None else [None])
    return [None if g is None else (g.to(F64) - e).abs().max().item() for g, e in zip(got, expected)]


def assert_accurate(name, got, expected, naive_err, factor, dtype):
    """Error bound of the module docstring for a computation on `dtype` inputs."""
    err = (got.to(F64) - expected).abs().max().item()
    scale = max(1.0, expected.abs().max().item())
    if dtype == torch.float32:
        tol = 1e-5 * factor * scale
    else:
        tol = factor * naive_err + 1e-5 * scale
    assert err <= tol, f"{name}: max error {err:.3e} > {tol:.3e} (naive {dtype}: {naive_err:.3e})"


# (id, B, T, S, H, Hkv, D, Dv, window, sinks, alibi, R, cu_seqlens, dtype)
CASES = [
    ("T1-full-fp32", 2, 1, 1, 2, 2, 32, 32, None, 0, False, 0, None, torch.float32),
    ("T2-w1-fp16", 1, 2, 2, 4, 4, 64, 64, 1, 0, False, 0, None, torch.float16),
    ("T97-w17-sinks4-gqa4-bf16", 1, 97, 97, 8, 2, 64, 64, 17, 4, False, 0, None, torch.bfloat16),
    ("T130-w64-mqa-d80-alibi-fp16", 2, 130, 130, 3, 1, 80, 80, 64, 0, True, 0, None, torch.float16),
    ("chunk-T97-S257-w64-sinks4-rel8-fp32", 1, 97, 257, 2, 1, 32, 32, 64, 4, False, 8, None, torch.float32),
    ("T257-w1-sinks4-mqa-bf16", 1, 257, 257, 4, 1, 32, 32, 1, 4, False, 0, None, torch.bfloat16),
    ("T130-w300-d192-dv128-rel300-bf16", 1, 130, 130, 2, 2, 192, 128, 300, 0, False, 300, None, torch.bfloat16),
    ("docs-w17-sinks4-alibi-gqa-bf16", 1, 130, 130, 4, 2, 32, 32, 17, 4, True, 0, [0, 1, 40, 40, 97, 130], BF16),
    ("docs-full-rel12-fp32", 1, 97, 97, 2, 1, 96, 96, None, 0, False, 12, [0, 60, 61, 97], torch.float32),
    ("docs-w64-sinks4-rel5-fp16", 1, 130, 130, 2, 2, 32, 32, 64, 4, True, 5, [0, 70, 71, 130], torch.float16),
]  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_forward_and_gradients_match_fp64_reference(case):
    _, B, T, S, H, Hkv, D, Dv, window, sinks, alibi, R, cu, dtype = case
    q, k, v, extra = make_inputs(B, T, S, H, Hkv, D, Dv, dtype, alibi=alibi, R=R, cu=cu)
    o, lse = tri.sliding_window_attention(q, k, v, window, sink_tokens=sinks, **extra)
    assert o.shape == (B, T, H, Dv) and o.dtype == dtype and lse.shape == (B, H, T) and lse.dtype == torch.float32
    do = torch.randn(B, T, H, Dv).to(dtype)
    grads = tri.sliding_window_attention_backward(do, q, k, v, o, lse, window, sink_tokens=sinks, **extra)
    (o_ref, lse_ref), grads_ref = reference_f64(q, k, v, window, do, sinks=sinks, extra=extra)
    naive = naive_errors(q, k, v, window, do, sinks=sinks, extra=extra, expected=[o_ref, *grads_ref])

    assert_accurate("o", o, o_ref, naive[0], 2, dtype)
    assert (lse.to(F64) - lse_ref).abs().max().item() <= 1e-4 * max(1.0, lse_ref.abs().max().item())
    for name, g, g_ref, err in zip(("dq", "dk", "dv", "drel"), grads, grads_ref, naive[1:]):
        if g_ref is None:
            assert g is None
            continue
        assert g.shape == g_ref.shape and g.dtype == (dtype if name != "drel" else extra["rel_bias"].dtype)
        assert_accurate(name, g, g_ref, err, 3, dtype)


def test_keys_outside_every_window_are_never_read():
    # Chunked prefill: queries at positions 272..311 with window 17 and 4 sinks never see keys 4..255. Keys 128..255
    # (whole key tiles: no tile is wider than 128) are poisoned with NaN: a kernel that loaded them for a query
    # would leak NaN through p @ v even with p = 0, so finite results show that the forward and dq kernels only
    # visit the band and the sinks, and that the dk/dv programs of those tiles do no work.
    T, W, sinks, lo, hi = 40, 17, 4, 128, 256
    S = hi + T + W - 1
    q, k, v, extra = make_inputs(1, T, S, 2, 1, 32, 32, torch.float16, R=6)
    clean_k, clean_v = k.clone(), v.clone()
    k[:, lo:hi] = float("nan")
    v[:, lo:hi] = float("nan")
    o, lse = tri.sliding_window_attention(q, k, v, W, sink_tokens=sinks, **extra)
    do = torch.randn_like(o)
    dq, dk, dv, drel = tri.sliding_window_attention_backward(do, q, k, v, o, lse, W, sink_tokens=sinks, **extra)
    (o_ref, _), (dq_ref, dk_ref, dv_ref, drel_ref) = reference_f64(q, clean_k, clean_v, W, do, sinks=sinks, extra=extra)
    for got, want in ((o, o_ref), (dq, dq_ref), (dk, dk_ref), (dv, dv_ref), (drel, drel_ref)):
        assert torch.isfinite(got).all()
        torch.testing.assert_close(got.to(F64), want, atol=2e-2, rtol=2e-2)
    assert not dk[:, sinks:hi].any() and not dv[:, sinks:hi].any()


def test_rows_that_see_no_key_give_zeros_not_nan():
    # rel_bias = -inf at distance 0 with window 3: query 0 (and each document's first query) sees only itself at
    # -inf, so its row is fully masked; the others see their 1 or 2 predecessors.
    T, H = 50, 2
    q, k, v, extra = make_inputs(1, T, T, H, H, 32, 32, torch.float32, R=4, cu=[0, 20, 21, 50])
    extra["rel_bias"][:, 0] = float("-inf")
    extra["cu_seqlens"] = extra["cu_seqlens"].long()  # int64 boundaries are accepted too
    o, lse = tri.sliding_window_attention(q, k, v, 3, **extra)
    do = torch.randn_like(o)
    dq, dk, dv, drel = tri.sliding_window_attention_backward(do, q, k, v, o, lse, 3, **extra)
    for first in (0, 20, 21):
        assert not o[:, first].any() and torch.isinf(lse[:, :, first]).all() and (lse[:, :, first] < 0).all()
        assert not dq[:, first].any()
    (o_ref, lse_ref), (dq_ref, dk_ref, dv_ref, drel_ref) = reference_f64(q, k, v, 3, do, sinks=0, extra=extra)
    assert torch.equal(torch.isinf(lse), torch.isinf(lse_ref))
    for got, want in ((o, o_ref), (dq, dq_ref), (dk, dk_ref), (dv, dv_ref), (drel, drel_ref)):
        assert not torch.isnan(got).any()
        torch.testing.assert_close(got.to(F64), want, atol=1e-5, rtol=1e-5)


def test_public_function_autograd_uses_triton_and_matches_reference():
    q, k, v, extra = make_inputs(2, 33, 45, 4, 2, 32, 32, torch.float32, alibi=True, R=7)
    assert _dispatch.backend_for("sliding_window_attention", q.device) == "triton"
    leaves = [x.clone().requires_grad_() for x in (q, k, v, extra["rel_bias"])]
    o = K.sliding_window_attention(
        *leaves[:3], 9, sink_tokens=2, alibi_slopes=extra["alibi_slopes"], rel_bias=leaves[3]
    )
    do = torch.randn_like(o)
    o.backward(do)
    (o_ref, _), grads_ref = reference_f64(q, k, v, 9, do, sinks=2, extra=extra)
    torch.testing.assert_close(o.detach().to(F64), o_ref, atol=1e-5, rtol=1e-5)
    for leaf, g_ref in zip(leaves, grads_ref):
        torch.testing.assert_close(leaf.grad.to(F64), g_ref, atol=2e-5, rtol=2e-5)


def test_drel_is_deterministic_and_backward_recomputes_missing_forward_outputs():
    q, k, v, extra = make_inputs(1, 70, 70, 2, 1, 32, 32, torch.bfloat16, R=40)
    o, lse = tri.sliding_window_attention(q, k, v, 33, sink_tokens=4, **extra)
    do = torch.randn_like(o)
    first = tri.sliding_window_attention_backward(do, q, k, v, o, lse, 33, sink_tokens=4, **extra)
    again = tri.sliding_window_attention_backward(do, q, k, v, None, None, 33, sink_tokens=4, **extra)
    for a, b in zip(first, again):
        assert torch.equal(a, b)


def test_strided_inputs_and_return_lse_false():
    base = torch.randn(2, 4, 50, 64)  # (B, H, T, D) memory, viewed as (B, T, H, D): non-contiguous, unit last stride
    q = base.transpose(1, 2)
    k = torch.randn(2, 50, 2, 64)[:, :, :1]  # a kv-head slice
    v = torch.randn(2, 50, 1, 128)[..., ::2]  # stride 2 on the head dim: made contiguous by the launcher
    o = tri.sliding_window_attention(q, k, v, 20, return_lse=False)
    torch.testing.assert_close(o, ref.sliding_window_attention(q, k, v, 20), atol=1e-5, rtol=1e-5)


def test_empty_sequences():
    q, k, v, _ = make_inputs(2, 0, 0, 2, 1, 32, 32, torch.float16)
    o, lse = tri.sliding_window_attention(q, k, v, 4)
    assert o.shape == (2, 0, 2, 32) and lse.shape == (2, 2, 0)
    dq, dk, dv, drel = tri.sliding_window_attention_backward(torch.empty_like(o), q, k, v, o, lse, 4)
    assert dq.shape == q.shape and dk.shape == k.shape and dv.shape == v.shape and drel is None


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda a: a.update(k=a["k"].half()), "share one dtype"),
        (lambda a: a.update(q=a["q"].double(), k=a["k"].double(), v=a["v"].double()), "fp32, fp16, bf16"),
        (lambda a: a.update(k=a["k"][:, :, :, :16]), "do not match"),
        (lambda a: a.update(q=a["q"][:, :, :3]), "multiple of Hkv"),
        (lambda a: a.update(k=a["k"][:, :10], v=a["v"][:, :10]), "exceed"),
        (lambda a: a.update(window=0), "window"),
        (lambda a: a.update(sink_tokens=-1), "sink_tokens"),
        (lambda a: a.update(rel_bias=torch.zeros(3, 4)), "rel_bias"),
        (lambda a: a.update(alibi_slopes=torch.zeros(2, 1)), "alibi_slopes"),
        (lambda a: a.update(cu_seqlens=torch.tensor([0, 20], dtype=torch.float32)), "cu_seqlens"),
        (lambda a: a.update(cu_seqlens=torch.tensor([0, 15, 12, 20], dtype=torch.int32)), "non-decreasing"),
        (lambda a: a.update(cu_seqlens=torch.tensor([0, 19], dtype=torch.int32)), "non-decreasing"),
        (lambda a: a.update(q=torch.randn(1, 20, 4, 320), k=torch.randn(1, 20, 2, 320)), "head dims"),
    ],
)
def test_launcher_rejects_bad_arguments(mutate, match):
    args = dict(q=torch.randn(1, 20, 4, 32), k=torch.randn(1, 20, 2, 32), v=torch.randn(1, 20, 2, 32), window=8)
    mutate(args)
    q, k, v, window = args.pop("q"), args.pop("k"), args.pop("v"), args.pop("window")
    with pytest.raises(ValueError, match=match):
        tri.sliding_window_attention(q, k, v, window, **args)


def test_backward_rejects_mismatched_forward_outputs():
    q, k, v, _ = make_inputs(1, 20, 20, 2, 1, 32, 32, torch.float32)
    o, lse = tri.sliding_window_attention(q, k, v, 8)
    with pytest.raises(ValueError, match="do must be"):
        tri.sliding_window_attention_backward(o[:, :-1], q, k, v, o, lse, 8)
    with pytest.raises(ValueError, match="lse must be"):
        tri.sliding_window_attention_backward(o, q, k, v, o, lse.transpose(1, 2), 8)


@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
def test_torch_compile_fullgraph(backend):
    q, k, v, extra = make_inputs(1, 24, 24, 2, 1, 32, 32, torch.float32, R=5)
    rel = extra["rel_bias"].requires_grad_()

    def loss(q, k, v, rel):
        return K.sliding_window_attention(q, k, v, 6, sink_tokens=1, rel_bias=rel).square().sum()

    compiled = torch.compile(loss, fullgraph=True, backend=backend)
    leaves = [x.clone().requires_grad_() for x in (q, k, v)]
    out = compiled(*leaves, rel)
    out.backward()
    leaves_eager = [x.clone().requires_grad_() for x in (q, k, v)]
    rel_eager = extra["rel_bias"].detach().clone().requires_grad_()
    loss(*leaves_eager, rel_eager).backward()
    torch.testing.assert_close(out, loss(q, k, v, rel).detach())
    for a, b in zip(leaves + [rel], leaves_eager + [rel_eager]):
        torch.testing.assert_close(a.grad, b.grad)


def test_aot_configs_cover_every_launchable_configuration():
    configs = {c.name: c for c in tri.aot_configs()}
    assert len(configs) == len(tri.aot_configs())  # names are unique
    for c in configs.values():
        params = list(c.signature)
        assert [p for p in params if c.signature[p] == "constexpr"] == list(c.constexprs)
        assert not c.constexprs.get("DOT_IN_FP32", False)  # the interpreter-only flag is never compiled
    for dtype, dt in ((torch.float32, "fp32"), (torch.float16, "fp16"), (torch.bfloat16, "bf16")):
        for D, Dv in ((8, 8), (32, 32), (64, 48), (80, 80), (96, 96), (128, 64), (192, 128), (256, 256), (32, 256)):
            bd, bdv = tri.head_blocks(D, Dv, dtype == torch.float32)
            assert bd >= max(D, Dv, 32) and bdv >= Dv
            for rel in (False, True):
                for kind in ("fwd", "dkdv", "dq"):
                    t = tri._TILES[kind, dtype == torch.float32, bd, rel]
                    name = f"swa_{kind}[{dt},D={bd},DV={bdv},rel={int(rel)},BM={t.block_m},BN={t.block_n}]"
                    assert name in configs, name
                    assert (configs[name].num_warps, configs[name].num_stages) == (t.num_warps, t.num_stages)
            assert f"swa_bwd_delta[{dt},DV={bdv}]" in configs


def test_model_logits_and_gradients_match_the_reference_path(monkeypatch):
    from fastllm.models import ModelConfig, Transformer

    # The SWA-MLA family with its intended sliding window + sinks, plus GQA and a clipped relative bias; the MLA
    # layer's prefill calls the same kernel with q/k and v head dims 12 and 6.
    cfg = ModelConfig.from_name(
        "swa-mla-262m",
        n_layer=3,
        d_model=32,
        n_head=4,
        n_kv_head=2,
        d_ff=48,
        vocab_size=97,
        max_seq_len=64,
        layer_pattern=("sliding", "sliding", "mla"),
        window=5,
        sink_tokens=2,
        rel_bias=6,
        kv_lora_rank=12,
        qk_nope_head_dim=8,
        qk_rope_head_dim=4,
        v_head_dim=6,
    )
    model = Transformer(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    ids = torch.randint(0, cfg.vocab_size, (2, 21))

    def run(backend):
        monkeypatch.setenv("FASTLLM_KERNELS", backend)  # "auto": Triton (interpreted) where a kernel exists
        model.zero_grad()
        logits = model(ids)
        logits.float().square().mean().backward()
        return logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if "attn" in n}

    logits_ref, grads_ref = run("reference")
    logits, grads = run("auto")
    torch.testing.assert_close(logits, logits_ref, atol=1e-4, rtol=1e-4)
    assert any("rel_bias" in n for n in grads)
    for n in grads_ref:
        torch.testing.assert_close(grads[n], grads_ref[n], atol=1e-4, rtol=1e-4, msg=n)
