"""fastllm's C++ decode attention (csrc/cpu/attention.h, launcher `fastllm.kernels.cpu.swa_decode`): the general
`swa_decode` (ring-buffer cache, windows, sinks, GQA, several new queries, ALiBi, relative-position bias) against
the fp64 reference on every instruction set this CPU has; unwritten slots holding NaN; strided caches; threads; the
dispatch that sends CPU calls to it; and its errors."""

import pytest
import torch
from conftest import CPU_ISAS, assert_thread_invariant

import fastllm.kernels as K
from fastllm.kernels import cpu
from fastllm.kernels.reference.attention import swa_decode as reference

# (B, Tq, H, Hkv, D, Dv, C, window, sinks): D and Dv off the vector widths, every GQA ratio, rings that wrap
CASES = [
    (1, 1, 12, 12, 64, 64, 160, None, 0),
    (3, 1, 8, 2, 37, 29, 40, None, 0),
    (2, 3, 6, 3, 17, 17, 23, 9, 2),
    (2, 4, 4, 1, 20, 12, 31, 16, 3),
    (3, 5, 8, 4, 33, 33, 19, 8, 4),
    (2, 8, 16, 1, 8, 5, 30, 20, 0),  # 128 query rows per kv head: several work items each
    (1, 2, 2, 2, 1, 1, 5, 3, 1),
    (2, 2, 6, 1, 45, 37, 50, None, 0),  # one kv head: the shared passes, whole vectors and tails of D and Dv
]


def inputs(case, dtype, seed, biases=False):
    B, Tq, H, Hkv, D, Dv, C, window, sinks = case
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, Tq, H, D, generator=g).to(dtype)
    k = torch.randn(B, C, Hkv, D, generator=g).to(dtype)
    v = torch.randn(B, C, Hkv, Dv, generator=g).to(dtype)
    top = C if window is None else 3 * C  # rows of every length: empty, shorter than Tq, full, wrapped
    L = torch.randint(0, top + 1, (B,), generator=g)
    L[0] = min(C, Tq + 2)
    alibi = torch.rand(H, generator=g) if biases else None
    rel = torch.randn(H, 7, generator=g) if biases else None
    return q, k, v, L, window, D**-0.5, sinks, alibi, rel


def fp64(q, k, v, L, window, scale, sinks, alibi, rel):
    d = [None if x is None else x.double() for x in (q, k, v, alibi, rel)]
    kw = dict(softmax_scale=scale, sink_tokens=sinks, alibi_slopes=d[3], rel_bias=d[4])
    return reference(d[0], d[1], d[2], L, window, **kw)


@pytest.mark.parametrize("isa", CPU_ISAS, indirect=True)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("biases", [False, True])
@pytest.mark.parametrize("case", CASES)
def test_matches_fp64_reference(isa, dtype, biases, case):
    for seed in range(3):
        args = inputs(case, dtype, seed, biases)
        want = fp64(*args)
        got = cpu.swa_decode(*args)
        assert got.dtype == dtype and got.shape == want.shape
        err = (got.double() - want).abs().max().item()
        if dtype == torch.float32:
            assert err <= 2e-6, err
        else:  # within 2x of torch's own bf16 computation (the reference path in bf16)
            torch_err = (reference(*args[:5], softmax_scale=args[5], sink_tokens=args[6], alibi_slopes=args[7],
                                   rel_bias=args[8]).double() - want).abs().max().item()  # fmt: skip
            assert err <= 2 * torch_err + 1e-6, (err, torch_err)


@pytest.mark.parametrize("isa", CPU_ISAS, indirect=True)
def test_softmax_over_a_wide_range_of_scores(isa):
    """Scores far below the row's maximum (exp underflows towards 0 and into subnormals) and rows whose key count is
    no multiple of the vector width: the kernel's vectorized exp against fp64."""
    for n in (1, 7, 16, 33, 250):
        args = list(inputs((2, 1, 4, 2, 24, 24, 256, None, 0), torch.float32, n))
        args[3].fill_(n)
        args[5] = 9.0  # scores of a few hundred: most probabilities ~0, some subnormal
        want = fp64(*args)
        got = cpu.swa_decode(*args)
        assert (got.double() - want).abs().max().item() <= 2e-6


@pytest.mark.parametrize("isa", CPU_ISAS, indirect=True)
def test_nan_in_a_seen_key_reaches_the_output(isa):
    """A NaN score is never the row's maximum and is never dropped as an unseen key: its queries output NaN, the other
    kv head's do not (as in the reference)."""
    q, k, v, L, window, scale, sinks, _, _ = inputs((1, 1, 4, 2, 16, 16, 40, None, 0), torch.float32, 5)
    L.fill_(37)
    k[0, 35, 1, 3] = float("nan")
    got = cpu.swa_decode(q, k, v, L, window, scale, sinks, None, None)
    want = reference(q, k, v, L, window, softmax_scale=scale, sink_tokens=sinks)
    assert got[0, 0, 2:].isnan().all() and not got[0, 0, :2].isnan().any()
    assert torch.equal(got.isnan(), want.isnan())
    torch.testing.assert_close(got[0, 0, :2], want[0, 0, :2], atol=2e-6, rtol=0)


def test_unwritten_slots_never_leak():
    """Slots past a row's length (and ring slots of positions outside every window) may hold NaN or inf."""
    for case in CASES:
        q, k, v, L, window, scale, sinks, alibi, rel = inputs(case, torch.float32, 7)
        want = cpu.swa_decode(q, k, v, L, window, scale, sinks, None, None)
        C = k.shape[1]
        for b, n in enumerate(L.tolist()):
            if n < C:
                k[b, n:] = float("nan")
                v[b, n:] = float("inf")
        got = cpu.swa_decode(q, k, v, L, window, scale, sinks, None, None)
        assert torch.equal(got, want)


def test_strided_caches_and_queries():
    """Views into bigger tensors (a cache slice, heads picked from a fused projection) read by their strides."""
    q, k, v, L, window, scale, sinks, _, _ = inputs(CASES[3], torch.float32, 1)
    big_k = torch.randn(k.shape[0], k.shape[1], k.shape[2] + 2, k.shape[3] + 3)
    big_k[:, :, 1:-1, 2:-1] = k
    big_v = torch.randn(*v.shape[:3], v.shape[3] + 4)[..., 4:]
    big_v.copy_(v)
    big_q = torch.randn(q.shape[0], q.shape[1], 2 * q.shape[2], q.shape[3])[:, :, ::2]
    big_q.copy_(q)
    kv = (big_k[:, :, 1:-1, 2:-1], big_v)
    got = cpu.swa_decode(big_q, *kv, L, window, scale, sinks, None, None)
    assert torch.equal(got, cpu.swa_decode(q, k, v, L, window, scale, sinks, None, None))


def test_threads_give_the_same_bits():
    """Each (row, kv head, query group) is computed whole by one thread: 1, 2 or 3 threads, or two Python threads
    calling at once, give identical outputs."""
    args = inputs((4, 2, 8, 2, 64, 64, 300, None, 0), torch.float32, 3)
    args[3].fill_(300)  # enough work to use every thread
    assert_thread_invariant(lambda: cpu.swa_decode(*args))
    small = inputs(CASES[0], torch.float32, 4)  # GPT-2's 12 heads: split over threads only inside decode_threads
    small[3].fill_(80)
    want = cpu.swa_decode(*small)
    with cpu.decode_threads():
        assert torch.equal(cpu.swa_decode(*small), want)


def test_public_swa_decode_dispatch(cpu_kernels, monkeypatch):
    """CPU calls of fastllm.kernels.swa_decode go to the C++ kernel unless FASTLLM_KERNELS=reference (or the Triton
    interpreter is on); both paths agree."""
    calls = []
    real = cpu.swa_decode
    monkeypatch.setattr(cpu, "swa_decode", lambda *a: calls.append(1) or real(*a))
    q, k, v, L, window, scale, sinks, _, _ = inputs(CASES[2], torch.float32, 0)
    fast = K.swa_decode(q, k, v, L, window, sink_tokens=sinks)
    assert calls == [1]
    monkeypatch.setenv("FASTLLM_KERNELS", "reference")
    slow = K.swa_decode(q, k, v, L, window, sink_tokens=sinks)
    assert calls == [1]
    torch.testing.assert_close(fast, slow, atol=2e-6, rtol=0)
    monkeypatch.setenv("FASTLLM_KERNELS", "auto")
    assert K.swa_decode(q.half(), k.half(), v.half(), L, window, sink_tokens=sinks).dtype == torch.half  # reference
    assert calls == [1]


def test_bad_input_is_refused_with_a_clear_error():
    q, k, v, L, window, scale, sinks, alibi, rel = inputs(CASES[2], torch.float32, 0, biases=True)
    C = k.shape[1]
    bad = [
        ((q, k.double(), v, L, window, scale, sinks, None, None), "one dtype"),
        ((q[0], k, v, L, window, scale, sinks, None, None), "4-D"),
        ((q, k[:, :, :1], v, L, window, scale, sinks, None, None), "do not fit"),
        ((q, k, v, L, window, scale, C, None, None), "no ring"),
        ((q, k, v, L[:1], window, scale, sinks, None, None), "cache_seqlens must be an integer"),
        ((q, k, v, -L, window, scale, sinks, None, None), ">= 0"),
        ((q, k, v, torch.full_like(L, C + 1), None, scale, sinks, None, None), "ring has wrapped"),
        ((q, k, v, torch.full_like(L, C + 1), C, scale, sinks, None, None), "C >= window"),
        ((q, k, v, L, window, scale, sinks, alibi[:2], None), "alibi_slopes"),
        ((q, k, v, L, window, scale, sinks, None, rel[:, :0]), "rel_bias"),
        ((q, torch.randn(*k.shape[:3], 2 * k.shape[3])[..., ::2], v, L, window, scale, sinks, None, None), "contig"),
    ]
    for args, match in bad:
        with pytest.raises(ValueError, match=match):
            cpu.swa_decode(*args)
