"""The C++ greedy step (csrc/cpu/sampling.h) that all-greedy CPU calls of `fastllm.kernels.sample` use: its ids
against torch.argmax (ties, NaN, infinities, bf16, strided rows), and the public sampler on it against the
reference path (same ids, same errors, the repetition penalty)."""

import pytest
import torch
from conftest import CPU_ISAS

import fastllm.kernels as K
from fastllm.kernels import cpu


def rows(V, seed):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(9, V, generator=g)
    z[1] = z[1].round()  # many ties: the first index wins
    z[2, V // 3] = z[2, -1] = z[2].max() + 1  # a tie at the max, far apart
    z[3, :] = float("-inf")
    z[3, V - 1] = 0.0  # the max at the very end, -inf elsewhere
    z[4, V // 2] = float("inf")
    z[5, :] = float("-inf")  # a row of -inf
    z[6, V - 1] = float("nan")  # NaN after the max
    z[7, 0] = float("nan")
    z[7, 5 % V] = float("nan")  # the first NaN wins
    return z


@pytest.mark.parametrize("isa", CPU_ISAS, indirect=True)
@pytest.mark.parametrize("V", [1, 7, 16, 17, 33, 50257])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_greedy_matches_torch_argmax(isa, V, dtype):
    """On every instruction set (AVX-512: a vector at a time, the lanes past V read as -inf)."""
    z = rows(V, V).to(dtype)
    ids, flags = cpu.greedy(z)
    assert ids.tolist() == z.argmax(-1).tolist()
    nan, posinf, neginf = (z.isnan().any(-1), z.isposinf().any(-1), (z == float("-inf")).all(-1))
    want = (1 if nan.any() else 0) | (2 if (posinf & ~nan).any() else 0) | (4 if (neginf & ~nan).any() else 0)
    assert flags == want
    strided = torch.zeros(9, 2 * V, dtype=dtype)[:, ::2]
    assert cpu.greedy(strided.contiguous())[0].tolist() == [0] * 9
    view = torch.cat([z, z], dim=1)[:, :V]  # rows with a stride of 2V
    assert cpu.greedy(view)[0].tolist() == z.argmax(-1).tolist()
    assert cpu.greedy(z[:0])[0].shape == (0,)


def test_bad_logits_are_refused():
    for bad in (torch.zeros(3, 5, dtype=torch.half), torch.zeros(3, 0), torch.zeros(5), torch.zeros(3, 6)[:, ::2]):
        with pytest.raises(ValueError, match="greedy needs"):
            cpu.greedy(bad)


def test_public_greedy_sample_on_the_kernel_equals_the_reference(cpu_kernels, monkeypatch):
    calls = []
    real = cpu.greedy
    monkeypatch.setattr(cpu, "greedy", lambda z: calls.append(1) or real(z))
    g = torch.Generator().manual_seed(0)
    for dtype in (torch.float32, torch.bfloat16):
        z = torch.randn(4, 1000, generator=g).round().to(dtype)  # ties
        prev = torch.randint(-1, 1000, (4, 30), generator=g)
        cases = [dict(), dict(repetition_penalty=1.3, prev_tokens=prev), dict(top_k=5, top_p=0.5)]
        for kw in cases:
            monkeypatch.setenv("FASTLLM_KERNELS", "auto")
            fast = K.sample(z, temperature=0.0, **kw)
            monkeypatch.setenv("FASTLLM_KERNELS", "reference")
            assert fast.tolist() == K.sample(z, temperature=0.0, **kw).tolist()
    assert len(calls) == 6
    monkeypatch.setenv("FASTLLM_KERNELS", "auto")
    plain = K.sample(z, temperature=0)  # every other parameter at its default: the argmax without the op
    assert plain.dtype == torch.int64 and torch.equal(plain, K.sample(z, temperature=torch.zeros(4)))
    assert len(calls) == 8
    monkeypatch.setenv("FASTLLM_KERNELS", "auto")
    K.sample(torch.randn(2, 9), temperature=torch.tensor([0.0, 1.0]), generator=g)  # a sampled row: the reference
    assert len(calls) == 8


@pytest.mark.parametrize(
    "logits,kw,match",
    [
        (torch.tensor([[0.0, float("nan")]]), {}, "NaN"),
        (torch.tensor([[0.0, float("inf")]]), {}, r"\+inf"),
        (torch.full((2, 3), float("-inf")), {}, "every logit is -inf"),
        (torch.zeros(1, 4), dict(top_p=1.5), "top_p"),
        (torch.zeros(1, 4), dict(top_k=-1), "top_k"),
        (torch.zeros(1, 4), dict(repetition_penalty=0.0, prev_tokens=torch.zeros(1, 2, dtype=torch.int64)), "penalty"),
        (torch.zeros(1, 4), dict(repetition_penalty=1.2, prev_tokens=torch.tensor([[7]])), "prev_tokens"),
    ],
)
def test_greedy_errors_are_the_references(cpu_kernels, logits, kw, match):
    with pytest.raises(ValueError, match=match):
        K.sample(logits, temperature=0.0, **kw)
