"""`fastllm.kernels.grouped_linear` (op `fastllm::grouped_linear`, csrc/cpu/linear.cpp's groups): independent linears
side by side, one per group, against an fp64 einsum on every instruction set this CPU has; strided weights; the
dispatch (C++ kernel, C++ torch operator, reference) agreeing; errors; and MLA's absorbed decode, which runs its
per-head up projections through it, against the same model with the einsums it replaced."""

import pytest
import torch
from conftest import CPU_ISAS

import fastllm.kernels as K
from fastllm import engine
from fastllm.kernels import cpu
from fastllm.models import ModelConfig, Transformer
from fastllm.models import mla as mla_module

# (leading dims, G, N, K)
CASES = [((1, 1), 16, 128, 256), ((3,), 5, 7, 9), ((2, 2), 3, 33, 130), ((8,), 4, 1, 1), ((1,), 1, 70, 257)]


def fp64(x, w, b):
    y = torch.einsum("...gk,gnk->...gn", x.double(), w.double())
    return y if b is None else y + b.double()


def strided(G, N, K_, dtype, g):
    """A (G, N, K) view with gaps between groups and rows, as MLA's W_UV is a view of wkv_b."""
    return torch.randn(G, N + 5, K_ + 3, generator=g).to(dtype)[:, 2 : N + 2, :K_]


@pytest.mark.parametrize("isa", CPU_ISAS, indirect=True)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("bias", [False, True])
def test_matches_fp64(isa, dtype, bias):
    g = torch.Generator().manual_seed(0)
    for lead, G, N, K_ in CASES:
        x = torch.randn(*lead, G, K_, generator=g).to(dtype)
        w = strided(G, N, K_, dtype, g)
        b = torch.randn(G, N, generator=g).to(dtype) if bias else None
        got = cpu.grouped_linear(x, w, b)
        assert got.dtype == dtype and got.shape == (*lead, G, N)
        want = fp64(x, w, b)
        err = (got.double() - want).abs().max().item()
        if dtype == torch.float32:
            assert err <= 1e-5 * max(1.0, want.abs().max().item()), (lead, G, N, K_, err)
        else:  # within 2x of torch's own bf16 batched matmul
            ref = torch.einsum("...gk,gnk->...gn", x, w) + (0 if b is None else b)
            torch_err = (ref.double() - want).abs().max().item()
            assert err <= 2 * torch_err + 1e-6, (lead, G, N, K_, err, torch_err)


def test_dispatch_paths_agree(native_ops, monkeypatch):
    """The public function, the Python op's C++ kernel, the C++ torch operator and the reference (over MAX_M rows,
    FASTLLM_KERNELS=reference) give the same values; fp32 to the bit between the kernel paths."""
    g = torch.Generator().manual_seed(1)
    x, w, b = torch.randn(2, 6, 40, generator=g), strided(6, 24, 40, torch.float32, g), torch.randn(6, 24, generator=g)
    kernel = cpu.grouped_linear(x, w, b)
    assert torch.equal(K.grouped_linear(x, w, b), kernel)
    assert torch.equal(torch.ops.fastllm_cpu.grouped_linear(x, w, b), kernel)
    assert torch.equal(torch.ops.fastllm.grouped_linear(x, w, b), kernel)
    big = torch.randn(cpu.MAX_M + 1, 6, 40, generator=g)  # past the kernel's rows: the reference
    torch.testing.assert_close(torch.ops.fastllm_cpu.grouped_linear(big, w, b), fp64(big, w, b).float())
    monkeypatch.setenv("FASTLLM_KERNELS", "reference")
    torch.testing.assert_close(torch.ops.fastllm.grouped_linear(x, w, b), kernel, atol=1e-5, rtol=1e-5)
    empty = torch.ops.fastllm.grouped_linear(torch.randn(2, 6, 0), torch.randn(6, 3, 0), None)
    assert empty.shape == (2, 6, 3) and not empty.any()


def test_bad_input_is_refused_with_a_clear_error():
    x, w = torch.randn(2, 4, 8), torch.randn(4, 3, 8)
    bad = [
        ((x, torch.randn(5, 3, 8)), "weight must be"),
        ((x, torch.randn(4, 3, 9)), "weight must be"),
        ((x, w.bfloat16()), "weight must be"),
        ((x, w, torch.randn(3, 4)), "bias must be"),
        ((torch.randn(8), w), "must be float"),
    ]
    for args, match in bad:
        with pytest.raises(ValueError, match=match):
            K.grouped_linear(*args)
    with pytest.raises(ValueError, match="bias must be"):
        cpu.grouped_linear(x, w, torch.randn(4, 3).bfloat16())


def test_mla_absorbed_decode_matches_the_einsums(cpu_kernels, monkeypatch):
    """The SWA-MLA model's cached decode (absorbed MLA layers) with the grouped GEMV gives the tokens and, within
    fp32 rounding, the logits of the same model with the per-head einsums it replaced."""
    torch.manual_seed(0)
    cfg = ModelConfig.from_name("swa-mla-262m", n_layer=3, d_model=64, n_head=4, d_ff=96, vocab_size=97, window=9)
    model = Transformer(cfg).eval()
    prompts = [torch.randint(0, 97, (n,)).tolist() for n in (5, 12)]
    greedy = engine.SamplingParams(temperature=0)
    calls = []
    real = cpu.grouped_linear
    monkeypatch.setattr(cpu, "grouped_linear", lambda *a: calls.append(a[1].shape) or real(*a))
    fast, _ = engine.generate(model, prompts, 12, sampling=greedy)
    assert len(calls) >= 2 * 11  # two per absorbed MLA layer and decode step
    monkeypatch.setattr(mla_module, "_per_head", lambda x, w: torch.einsum("...hk,hnk->...hn", x, w))
    plain, _ = engine.generate(model, prompts, 12, sampling=greedy)
    assert fast == plain
