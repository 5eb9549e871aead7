"""Float weights in the packed layouts (`fastllm.kernels.pack_weight`, csrc/cpu/linear.h): the C++ kernel on packed
fp32 and bf16 tiles and on bf16 "vnni2" tiles (`fastllm.kernels.cpu.linear_packed`, op `fastllm::linear_packed`)
against the fp64 reference on every instruction set this CPU has; bit-equality of tiles with the row-major kernel
(same summation order); the dispatch; errors; and the compiled CPU decode step, whose frozen bf16 weights are packed
once while compiling."""

import pytest
import torch
from conftest import CPU_ISAS

import fastllm.kernels as K
from fastllm import engine
from fastllm.kernels import cpu
from fastllm.kernels.reference.linear import pack_weight, packed_layout, unpack_weight
from fastllm.models import ModelConfig, Transformer

SHAPES = [(1, 37, 19), (3, 203, 130), (8, 9, 64), (11, 70, 257), (16, 1, 1), (2, 64, 128)]  # (M, N, K)


@pytest.mark.parametrize("layout", ["tiles", "vnni2"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.int8])
def test_pack_round_trip(dtype, layout):
    for _, N, K_ in SHAPES:
        w = (torch.randn(N, K_) * 50).to(dtype)
        packed = pack_weight(w, layout=layout)
        assert packed.shape == K.packed_shape(N, K_, layout) and packed.dtype == dtype
        assert packed_layout(packed) == layout
        assert torch.equal(unpack_weight(packed, N, K_), w)
        assert int((packed != 0).sum()) == int((w != 0).sum())  # the padding is zeros
    w = torch.arange(2 * 5, dtype=torch.float32).view(2, 5)  # row n, column k at [n // 16, k // 2, n % 16, k % 2]
    v = pack_weight(w, layout="vnni2")
    assert v.shape == (1, 3, 16, 2) and v[0, 1, 1, 0] == w[1, 2] and v[0, 2, 0, 1] == 0  # the padding column


@pytest.mark.parametrize("isa", CPU_ISAS, indirect=True)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("bias", [False, True])
def test_matches_fp64_reference_and_the_row_major_kernel(isa, dtype, bias):
    g = torch.Generator().manual_seed(0)
    for M, N, K_ in SHAPES:
        x = torch.randn(M, K_, generator=g).to(dtype)
        w = torch.randn(N, K_, generator=g).to(dtype)
        b = torch.randn(N, generator=g).to(dtype) if bias else None
        got = cpu.linear_packed(x, pack_weight(w), b, N)
        assert got.dtype == dtype and got.shape == (M, N)
        assert torch.equal(got, cpu.linear(x, w, b))  # the same fp32 sums in the same order
        want = x.double() @ w.double().T + (0 if b is None else b.double())
        err = (got.double() - want).abs().max().item()
        if dtype == torch.float32:
            assert err <= 1e-5 * max(1.0, want.abs().max().item()), err
        else:  # within 2x of torch's own bf16 linear
            torch_err = (torch.nn.functional.linear(x, w, b).double() - want).abs().max().item()
            assert err <= 2 * torch_err + 1e-6, (err, torch_err)


@pytest.mark.parametrize("isa", CPU_ISAS, indirect=True)
@pytest.mark.parametrize("bias", [False, True])
def test_vnni2_matches_fp64_reference(isa, bias):
    """bf16 weights in the "vnni2" layout (vdpbf16ps on AVX512-BF16 CPUs, portable code on the others): every row
    count up to MAX_M_PACKED (groups of 1-4 rows, 1-12 tiles at once, blocks of tiles) against fp64, within 2x of
    torch's own bf16 linear."""
    g = torch.Generator().manual_seed(1)
    shapes = SHAPES + [(M, 203, 130) for M in (2, 4, 5, 7, 9, 12)] + [(1, 400, 33), (4, 16 * 25 + 3, 64)]
    for M, N, K_ in shapes:
        x = torch.randn(M, K_, generator=g).bfloat16()
        w = torch.randn(N, K_, generator=g).bfloat16()
        b = torch.randn(N, generator=g).bfloat16() if bias else None
        got = cpu.linear_packed(x, pack_weight(w, layout="vnni2"), b, N)
        assert got.dtype == torch.bfloat16 and got.shape == (M, N)
        want = x.double() @ w.double().T + (0 if b is None else b.double())
        err = (got.double() - want).abs().max().item()
        torch_err = (torch.nn.functional.linear(x, w, b).double() - want).abs().max().item()
        assert err <= 2 * torch_err + 1e-6, (M, N, K_, err, torch_err)


def test_leading_dims_and_views():
    x = torch.randn(2, 3, 40)[:, 1:]  # (2, 2, 40), not contiguous
    w = torch.randn(21, 40)
    got = cpu.linear_packed(x, pack_weight(w), None, 21)
    assert got.shape == (2, 2, 21)
    torch.testing.assert_close(got, x @ w.T, atol=1e-5, rtol=1e-5)


def test_op_dispatch(cpu_kernels, monkeypatch):
    """CPU calls of fastllm::linear_packed with up to MAX_M_PACKED rows take the C++ kernel unless
    FASTLLM_KERNELS=reference; larger ones and other dtypes the reference (unpack, F.linear); all agree."""
    calls = []
    real = cpu.linear_packed
    monkeypatch.setattr(cpu, "linear_packed", lambda *a: calls.append(1) or real(*a))
    w, b = torch.randn(33, 70), torch.randn(33)
    packed = pack_weight(w)
    x = torch.randn(5, 70)
    fast = torch.ops.fastllm.linear_packed(x, packed, b, 33)
    assert calls == [1]
    big = torch.randn(cpu.MAX_M_PACKED + 1, 70)
    torch.testing.assert_close(torch.ops.fastllm.linear_packed(big, packed, b, 33), big @ w.T + b)
    monkeypatch.setenv("FASTLLM_KERNELS", "reference")
    slow = torch.ops.fastllm.linear_packed(x, packed, b, 33)
    assert calls == [1]
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=1e-5)
    half = torch.ops.fastllm.linear_packed(x.half(), pack_weight(w.half()), b.half(), 33)
    assert half.dtype == torch.half and calls == [1]
    monkeypatch.delenv("FASTLLM_KERNELS")
    xb, wb, bb = x.bfloat16(), w.bfloat16(), b.bfloat16()
    v = torch.ops.fastllm.linear_packed(xb, pack_weight(wb, layout="vnni2"), bb, 33)  # the layout told by the shape
    assert calls == [1, 1]
    torch.testing.assert_close(v, torch.nn.functional.linear(xb, wb, bb), atol=0.05, rtol=0.02)


def test_bad_input_is_refused_with_a_clear_error():
    w = torch.randn(10, 20)
    packed = pack_weight(w)
    bad = [
        ((torch.randn(2, 20).double(), packed, None, 10), "float32 or bfloat16"),
        ((torch.randn(2, 20), packed.bfloat16(), None, 10), "packed weight for"),
        ((torch.randn(2, 20), packed, None, 17), "packed weight for"),
        ((torch.randn(2, 70), packed, None, 10), "packed weight for"),
        ((torch.randn(2, 20), packed, torch.randn(9), 10), "bias must be"),
        ((torch.randn(2, 20), pack_weight(w, layout="vnni2"), None, 10), "packed weight for"),  # bf16 only
        ((torch.randn(2, 20).bfloat16(), pack_weight(w, layout="vnni2").bfloat16(), None, 17), r"\(2, 10, 16, 2\)"),
    ]
    for args, match in bad:
        with pytest.raises(ValueError, match=match):
            cpu.linear_packed(*args)
    with pytest.raises(ValueError, match="pack_weight"):
        pack_weight(torch.randn(3))
    with pytest.raises(ValueError, match="layout must be one of"):
        pack_weight(w, layout="vnni")  # int8 codes' layout: pack_int8


def test_frozen_bf16_decode_step_runs_packed_and_matches_eager(cpu_kernels, monkeypatch):
    """compile=True on the CPU, bf16 without biases: the step's linears run fastllm::linear_packed on weights packed
    while compiling (freezing folds pack_weight): "vnni2" on CPUs with AVX512-BF16 (other sums than the eager step's
    row-major kernel, in fp32 all the same), "tiles" elsewhere (the same sums); identical tokens; a changed weight
    recompiles."""
    torch.manual_seed(0)
    cfg = ModelConfig.from_name(
        "llm-scratch-v2", n_layer=2, d_model=64, n_head=4, d_ff=96, vocab_size=97, out_bias=False, mlp_bias=False
    )  # bias-free bf16 linears: every one packs (`packs_when_frozen`)
    model = Transformer(cfg).eval().to(torch.bfloat16)
    prompts = [torch.randint(0, 97, (n,)).tolist() for n in (3, 7)]
    greedy = engine.SamplingParams(temperature=0)
    calls = []
    real = cpu.linear_packed
    monkeypatch.setattr(cpu, "linear_packed", lambda *a: calls.append(packed_layout(a[1])) or real(*a))
    eager, _ = engine.generate(model, prompts, 10, sampling=greedy)
    assert calls == []
    compiled, _ = engine.generate(model, prompts, 10, sampling=greedy, compile=True)
    assert compiled == eager and len(calls) >= 9 * len([m for m in model.modules() if isinstance(m, torch.nn.Linear)])
    assert set(calls) == {"vnni2" if cpu.isa() == "avx512bf16" else "tiles"}
    with torch.no_grad():
        model.lm_head.weight.mul_(-1.0)
    eager, _ = engine.generate(model, prompts, 10, sampling=greedy)
    compiled, _ = engine.generate(model, prompts, 10, sampling=greedy, compile=True)
    assert compiled == eager


def test_biased_bf16_packs_at_one_row_where_vnni2(cpu_kernels, monkeypatch):
    """bf16 linears with biases pack in steps of one row on CPUs with AVX512-BF16 ("vnni2"), elsewhere and at more
    rows they stay on inductor's GEMMs; tokens equal the eager step's either way."""
    from fastllm.models.layers import packs_when_frozen

    torch.manual_seed(0)
    cfg = ModelConfig.from_name("gpt2", n_layer=2, d_model=64, n_head=4, vocab_size=97)  # biases everywhere
    model = Transformer(cfg).eval().to(torch.bfloat16)
    vnni2 = cpu.isa() == "avx512bf16"
    assert packs_when_frozen(model, 1) == vnni2 and not packs_when_frozen(model, 2) and not packs_when_frozen(model)
    greedy = engine.SamplingParams(temperature=0)
    calls = []
    real = cpu.linear_packed
    monkeypatch.setattr(cpu, "linear_packed", lambda *a: calls.append(packed_layout(a[1])) or real(*a))
    for prompts in ([[5, 6, 7]], [[5, 6, 7], [1, 2]]):
        calls.clear()
        eager, _ = engine.generate(model, prompts, 8, sampling=greedy)
        compiled, _ = engine.generate(model, prompts, 8, sampling=greedy, compile=True)
        assert compiled == eager
        assert set(calls) == ({"vnni2"} if vnni2 and len(prompts) == 1 else set())
