"""fastllm's C++ MLA decode (the decode attention kernel of csrc/cpu/attention.h with one kv head shared by every
query head; launcher `fastllm.kernels.cpu.mla_decode`): absorbed-query attention over a contiguous or paged latent
cache against the fp64 reference, output and log-sum-exp, on every instruction set this CPU has; stale pages and
slots holding NaN; threads; the dispatch that sends CPU calls to it; and its errors."""

import pytest
import torch
from conftest import CPU_ISAS, assert_thread_invariant

import fastllm.kernels as K
from fastllm.kernels import cpu
from fastllm.kernels.reference.mla import mla_decode as reference

# (B, Tq, H, R, Dr, S, page_size or None): R and Dr off the vector widths, several new queries, paged pools
CASES = [
    (1, 1, 16, 256, 64, 300, None),  # the swa-mla-262m layer
    (3, 1, 5, 37, 9, 41, None),
    (2, 3, 4, 20, 4, 33, None),
    (2, 2, 8, 24, 8, 0, 16),
    (3, 4, 3, 17, 3, 0, 32),
    (1, 1, 2, 1, 1, 5, None),
]


def inputs(case, dtype, seed):
    """(q, kv_cache, seqlens, R, scale, block_table): rows of every length (empty, shorter than Tq, full)."""
    B, Tq, H, R, Dr, S, page = case
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, Tq, H, R + Dr, generator=g).to(dtype)
    if page is None:
        kv = torch.randn(B, S, R + Dr, generator=g).to(dtype)
        L = torch.randint(0, S + 1, (B,), generator=g)
        table = None
    else:
        max_pages = 5
        kv = torch.randn(B * max_pages + 3, page, R + Dr, generator=g).to(dtype)  # a pool with unused pages
        table = torch.randperm(kv.shape[0], generator=g)[: B * max_pages].view(B, max_pages).to(torch.int32)
        L = torch.randint(0, max_pages * page + 1, (B,), generator=g)
    L[0] = min(Tq + 2, kv.shape[1] if page is None else 5 * page)
    L[-1] = 0 if B > 2 else L[-1]
    return q, kv, L, R, (R + Dr) ** -0.5, table


def fp64(q, kv, L, R, scale, table):
    return reference(q.double(), kv.double(), L, kv_lora_rank=R, softmax_scale=scale, block_table=table)


@pytest.mark.parametrize("isa", CPU_ISAS, indirect=True)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", CASES)
def test_matches_fp64_reference(isa, dtype, case):
    for seed in range(3):
        args = inputs(case, dtype, seed)
        want_o, want_lse = fp64(*args)
        o, lse = cpu.mla_decode(*args)
        assert o.dtype == dtype and o.shape == want_o.shape and lse.dtype == torch.float32
        seen = want_lse > float("-inf")
        assert torch.equal(lse == float("-inf"), ~seen)  # rows that see no key: -inf and zeros
        assert torch.equal(o[~seen], torch.zeros_like(o[~seen]))
        lse_err = (lse.double() - want_lse)[seen].abs().max().item() if seen.any() else 0.0
        assert lse_err <= 2e-5, lse_err
        err = (o.double() - want_o).abs().max().item()
        if dtype == torch.float32:
            assert err <= 2e-6, err
        else:  # within 2x of torch's own bf16 computation (the reference path in bf16)
            ref_o, _ = reference(*args[:2], args[2], kv_lora_rank=args[3], softmax_scale=args[4], block_table=args[5])
            torch_err = (ref_o.double() - want_o).abs().max().item()
            assert err <= 2 * torch_err + 1e-6, (err, torch_err)


@pytest.mark.parametrize("case", [CASES[1], CASES[3]])
def test_unread_slots_and_pages_never_leak(case):
    """Slots past a row's length, pages past the ones it uses and pool pages no row names may hold NaN."""
    q, kv, L, R, scale, table = inputs(case, torch.float32, 5)
    want = cpu.mla_decode(q, kv, L, R, scale, table)
    page = kv.shape[1]
    used = torch.zeros(kv.shape[0], page, dtype=torch.bool)
    for b, n in enumerate(L.tolist()):
        if table is None:
            used[b, :n] = True
        else:
            for s in range(n):
                used[table[b, s // page], s % page] = True
            table[b, -(-n // page) :] = -1  # entries past the pages a row uses are not read either
    kv[~used] = float("nan")
    got = cpu.mla_decode(q, kv, L, R, scale, table)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_threads_give_the_same_bits():
    args = inputs((3, 2, 16, 64, 16, 400, None), torch.float32, 3)
    args[2].fill_(400)  # enough work to use every thread
    assert_thread_invariant(lambda: cpu.mla_decode(*args))


def test_public_mla_decode_dispatch(cpu_kernels, monkeypatch):
    """CPU calls of fastllm.kernels.mla_decode go to the C++ kernel unless FASTLLM_KERNELS=reference; both agree."""
    calls = []
    real = cpu.mla_decode
    monkeypatch.setattr(cpu, "mla_decode", lambda *a: calls.append(1) or real(*a))
    for case in (CASES[2], CASES[3]):
        q, kv, L, R, scale, table = inputs(case, torch.float32, 0)
        calls.clear()
        fast = K.mla_decode(q, kv, L, kv_lora_rank=R, softmax_scale=scale, block_table=table)
        assert calls == [1]
        monkeypatch.setenv("FASTLLM_KERNELS", "reference")
        slow = K.mla_decode(q, kv, L, kv_lora_rank=R, softmax_scale=scale, block_table=table)
        monkeypatch.setenv("FASTLLM_KERNELS", "auto")
        assert calls == [1]
        torch.testing.assert_close(fast[0], slow[0], atol=2e-6, rtol=0)
        torch.testing.assert_close(fast[1], slow[1], atol=2e-5, rtol=0)
    assert K.mla_decode(q.half(), kv.half(), L, kv_lora_rank=R, softmax_scale=scale, block_table=table)[0].dtype == (
        torch.half
    )  # the reference
    assert calls == [1]


def test_bad_input_is_refused_with_a_clear_error():
    """The launcher's own checks, worded like the reference's (the public wrapper checks shapes first)."""
    q, kv, L, R, scale, _ = inputs(CASES[1], torch.float32, 0)
    pq, pool, pL, pR, pscale, table = inputs(CASES[3], torch.float32, 0)
    S, page = kv.shape[1], pool.shape[1]
    bad_table = table.clone()
    bad_table[0, 0] = pool.shape[0]
    bad = [
        ((q, kv.double(), L, R, scale, None), "one dtype"),
        ((q, kv[..., :-1], L, R, scale, None), r"kv_cache must be \(\.\., \.\., "),
        ((q, kv, L, 0, scale, None), "kv_lora_rank"),
        ((q, kv, L[:1], R, scale, None), "cache_seqlens must be an integer"),
        ((q, kv, L.float(), R, scale, None), "cache_seqlens must be an integer"),
        ((q, kv, torch.full_like(L, -1), R, scale, None), ">= 0"),
        ((q, kv, torch.full_like(L, S + 1), R, scale, None), "exceeds the cache length"),
        ((pq, pool, torch.full_like(pL, 5 * page + 1), pR, pscale, table), "needs 6 pages, block_table has 5"),
        ((pq, pool, torch.full_like(pL, 1), pR, pscale, bad_table), "names pages outside the pool"),
        ((pq, pool, pL, pR, pscale, table[:1]), "block_table must be an integer"),
        ((pq, pool, pL, pR, pscale, table.float()), "block_table must be an integer"),
        ((q, torch.randn(*kv.shape[:2], 2 * kv.shape[2])[..., ::2], L, R, scale, None), "contig"),
    ]
    for args, match in bad:
        with pytest.raises(ValueError, match=match):
            cpu.mla_decode(*args)
