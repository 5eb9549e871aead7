"""Triton GLU kernels (fastllm.kernels.triton.glu) under the interpreter, against fp64 oracles in plain PyTorch.

Tolerance rule: the kernel's max abs error against the fp64 oracle is at most 2x (3x for gradients) that of
PyTorch doing the same computation in the same dtype, plus one epsilon of that dtype times the largest oracle
value (so that a PyTorch result that happens to be exact does not demand an exact kernel).
"""

import pytest
import torch
import torch.nn.functional as F

import fastllm.kernels as K
from fastllm.kernels import _dispatch
from fastllm.kernels.triton import glu as triton_glu
from fastllm.models import ModelConfig, Transformer

pytestmark = [
    pytest.mark.triton,
    pytest.mark.filterwarnings("ignore:overflow encountered in exp:RuntimeWarning"),  # saturating activations
]

ACTIVATIONS = ["silu", "gelu", "gelu_tanh"]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# (..., I) shapes: hidden 1, 97, 11008, 14336 with 1, 3 or 1000 tokens (the big hidden sizes with few tokens)
SHAPES = [(1, 1), (3, 1, 97), (11008,), (3, 14336)]


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # small ops: one thread avoids oversubscription on a loaded machine
    torch.manual_seed(0)
    yield
    torch.set_num_threads(n)


def act(x, activation):
    """The oracle's activation: plain PyTorch, in x's dtype."""
    if activation == "silu":
        return F.silu(x)
    return F.gelu(x, approximate="tanh" if activation == "gelu_tanh" else "none")


def glu_torch(gate, up, activation):
    return act(gate, activation) * up


def assert_within(got, same_dtype, oracle, factor, what):
    """max |got - oracle| <= factor * max |same_dtype - oracle| + eps(dtype) * max |oracle|."""
    oracle = oracle.double()
    err = (got.double() - oracle).abs().max().item()
    base = (same_dtype.double() - oracle).abs().max().item()
    bound = factor * base + torch.finfo(got.dtype).eps * oracle.abs().max().item()
    assert err <= bound, f"{what}: error {err:.3g} > {bound:.3g} ({factor}x PyTorch's {base:.3g} in {got.dtype})"


def fwd_bwd_torch(gate, up, grad, activation):
    """(out, dgate, dup) of plain PyTorch autograd, in the inputs' dtype."""
    g, u = gate.detach().requires_grad_(), up.detach().requires_grad_()
    out = glu_torch(g, u, activation)
    out.backward(grad)
    return out.detach(), g.grad, u.grad


def check_glu(gate, up, activation, dtype, fn=K.glu):
    """Kernel forward and gradients of fn(gate, up) in dtype against fp64 and against PyTorch in dtype."""
    grad = torch.randn(gate.shape, dtype=torch.float64)
    want = fwd_bwd_torch(gate.double(), up.double(), grad, activation)
    same = fwd_bwd_torch(gate.to(dtype), up.to(dtype), grad.to(dtype), activation)
    g, u = gate.to(dtype).requires_grad_(), up.to(dtype).requires_grad_()
    out = fn(g, u, activation)
    out.backward(grad.to(dtype))
    assert out.dtype == dtype and out.shape == gate.shape
    assert_within(out, same[0], want[0], 2, "out")
    assert_within(g.grad, same[1], want[1], 3, "dgate")
    assert_within(u.grad, same[2], want[2], 3, "dup")


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_glu_forward_backward(activation, dtype, shape):
    gate, up = 3 * torch.randn(shape), torch.randn(shape)  # gates over the activation's curved range
    check_glu(gate, up, activation, dtype)


@pytest.mark.parametrize(("activation", "dtype"), zip(ACTIVATIONS, [torch.bfloat16, torch.float16, torch.float32]))
def test_glu_1000_tokens(activation, dtype):
    check_glu(3 * torch.randn(2, 500, 97), torch.randn(2, 500, 97), activation, dtype)


def packed_as_glu(gate_first):
    """glu(gate, up) computed by glu_packed on [gate | up] (or [up | gate]), so check_glu drives the packed op."""

    def fn(gate, up, activation):
        return K.glu_packed(torch.cat([gate, up] if gate_first else [up, gate], -1), activation, gate_first=gate_first)

    return fn


@pytest.mark.parametrize("gate_first", [True, False])
@pytest.mark.parametrize("shape", [(3, 97), (1, 11008)], ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_glu_packed_forward_backward(activation, dtype, shape, gate_first):
    check_glu(3 * torch.randn(shape), torch.randn(shape), activation, dtype, packed_as_glu(gate_first))


def test_packed_halves_are_read_in_place():
    x = torch.randn(4, 3, 2 * 97)
    rows = triton_glu._as_rows(x, 2 * 97)  # the (rows, 2I) matrix whose column halves the kernel reads
    assert rows.data_ptr() == x.data_ptr() and rows.stride() == (2 * 97, 1)
    wide = torch.randn(5, 300)
    assert triton_glu._as_rows(wide[:, 100:297], 197).data_ptr() == wide[:, 100:].data_ptr()  # strided rows: a view


def test_strided_and_broadcast_inputs():
    buf = torch.randn(5, 300, dtype=torch.float64)
    gate, up = buf[:, :97], buf[:, 150:247]  # row stride 300
    torch.testing.assert_close(K.glu(gate.float(), up.float(), "silu"), glu_torch(gate, up, "silu").float())
    for t in (gate, up):
        assert t.stride() == (300, 1)
    g32, u32 = buf.float()[:, :97], buf.float()[:, 150:247]
    torch.testing.assert_close(K.glu(g32, u32, "gelu"), glu_torch(g32.double(), u32.double(), "gelu").float())
    gt = torch.randn(97, 6).T  # last-dim stride 6: the launcher copies it
    torch.testing.assert_close(K.glu(gt, gt, "gelu_tanh"), glu_torch(gt.double(), gt.double(), "gelu_tanh").float())
    wide = torch.randn(2, 3, 500)
    x = wide[..., 10 : 10 + 2 * 97]  # packed x inside a wider buffer
    want = glu_torch(x[..., 97:].double(), x[..., :97].double(), "silu").float()
    torch.testing.assert_close(K.glu_packed(x, "silu", gate_first=False), want)
    # grad of .sum() arrives expanded (stride 0); the backward must read it as a broadcast
    g, u = torch.randn(4, 33, requires_grad=True), torch.randn(4, 33, requires_grad=True)
    K.glu(g, u, "silu").sum().backward()
    gd, ud = g.detach().double().requires_grad_(), u.detach().double().requires_grad_()
    glu_torch(gd, ud, "silu").sum().backward()
    torch.testing.assert_close(g.grad, gd.grad.float())
    torch.testing.assert_close(u.grad, ud.grad.float())


def test_gelu_tanh_gradient_is_as_accurate_as_torch_in_fp32():
    """d gelu_tanh / dx = s + 2 x s (1 - s) u'(x) with s = sigmoid(2u): computing 1 - s as sigmoid(-2u) keeps it
    exact where s rounds to 1 (x of 5 to 10, where u' is large); through tanh, 1 - t^2 there cost 3x torch's error."""
    torch.manual_seed(0)
    gate, up = 3 * torch.randn(64, 301, dtype=torch.float64), torch.randn(64, 301, dtype=torch.float64)
    grad = torch.randn(64, 301, dtype=torch.float64)
    want = fwd_bwd_torch(gate, up, grad, "gelu_tanh")
    same = fwd_bwd_torch(gate.float(), up.float(), grad.float(), "gelu_tanh")
    g = gate.float().requires_grad_()
    K.glu(g, up.float(), "gelu_tanh").backward(grad.float())
    assert_within(g.grad, same[1], want[1], 1, "dgate")


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_saturated_activations(activation):
    gate = torch.tensor([-1e4, -100.0, -30.0, -5.0, 0.0, 5.0, 30.0, 100.0, 1e4], dtype=torch.float64)
    check_glu(gate, torch.linspace(-2, 2, 9, dtype=torch.float64), activation, torch.float32)


def test_empty_inputs():
    assert K.glu(torch.randn(0, 5), torch.randn(0, 5)).shape == (0, 5)
    assert K.glu_packed(torch.randn(2, 0)).shape == (2, 0)
    assert K.glu_linear(torch.randn(0, 8), torch.randn(6, 8)).shape == (0, 3)


def test_backward_twice_and_inputs_saved_by_other_ops():
    """No in-place writes into tensors autograd still needs: retain_graph twice, and inputs shared with other ops."""
    torch.manual_seed(1)
    gate, up, x, w = torch.randn(3, 40), torch.randn(3, 40), torch.randn(3, 80), torch.randn(40, 5)
    kept = [t.clone() for t in (gate, up, x, w)]

    def loss(glu, glu_packed, gate, up, x, w):
        # gate also feeds exp (which saves its output) and a matmul whose backward needs up; x feeds sin and glu_packed
        h = glu(gate, up) @ w + gate.exp().sum() + (up @ w).square().sum()
        return h.square().sum() + (glu_packed(x) * x[:, :40]).sum() + x.sin().sum()

    leaves = [t.clone().requires_grad_() for t in (gate, up, x, w)]
    out = loss(lambda g, u: K.glu(g, u, "gelu"), lambda t: K.glu_packed(t, "silu", gate_first=False), *leaves)
    first = torch.autograd.grad(out, leaves, retain_graph=True)
    second = torch.autograd.grad(out, leaves)
    for a, b in zip(first, second):
        assert torch.equal(a, b)
    leaves64 = [t.double().requires_grad_() for t in (gate, up, x, w)]
    out64 = loss(lambda g, u: glu_torch(g, u, "gelu"), lambda t: glu_torch(t[:, 40:], t[:, :40], "silu"), *leaves64)
    for a, b in zip(first, torch.autograd.grad(out64, leaves64)):
        torch.testing.assert_close(a, b.float(), rtol=1e-4, atol=1e-4)
    for t, k in zip((gate, up, x, w), kept):
        assert torch.equal(t, k)


# ---- glu_linear ----------------------------------------------------------------------------------------------------

# (M, K, I, layout, bias): M 1 (decode tile), 7, 129 (prefill tile, two row blocks); K 64, 97; I 96, 200
LINEAR_SHAPES = [
    (1, 64, 96, "gate_first", False),
    (7, 97, 200, "gate_second", True),
    (129, 97, 96, "gate_first", True),
    (129, 64, 200, "gate_second", False),
]


def glu_linear_torch(x, w, bias, activation, layout):
    """act(x @ Wg^T + bg) * (x @ Wu^T + bu) in plain PyTorch, in x's dtype."""
    h = F.linear(x, w, bias)  # (..., 2I)
    first, second = h.chunk(2, dim=-1)
    gate, up = (first, second) if layout == "gate_first" else (second, first)
    return glu_torch(gate, up, activation)


@pytest.mark.parametrize(("m", "k", "n", "layout", "has_bias"), LINEAR_SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_glu_linear(activation, dtype, m, k, n, layout, has_bias):
    x, w = torch.randn(m, k, dtype=torch.float64), torch.randn(2 * n, k, dtype=torch.float64) / k**0.5
    bias = torch.randn(2 * n, dtype=torch.float64) if has_bias else None
    want = glu_linear_torch(x, w, bias, activation, layout)
    cast = [None if t is None else t.to(dtype) for t in (x, w, bias)]
    same = glu_linear_torch(*cast, activation, layout)
    got = K.glu_linear(cast[0], cast[1], activation, layout, bias=cast[2])
    assert got.shape == (m, n) and got.dtype == dtype
    assert_within(got, same, want, 2, "glu_linear")


def test_glu_linear_leading_dims_strides_and_autograd():
    x = torch.randn(2, 3, 40)[..., :33]  # row stride 40
    w = torch.randn(33, 2 * 48).T  # (96, 33) with column stride 96: the launcher copies it
    bias = torch.randn(96)
    got = K.glu_linear(x, w, "gelu", "gate_second", bias=bias)
    want = glu_linear_torch(x.double(), w.double(), bias.double(), "gelu", "gate_second")
    torch.testing.assert_close(got, want.float(), rtol=1e-5, atol=1e-5)
    leaves = [t.detach().clone().requires_grad_() for t in (x, w, bias)]
    K.glu_linear(leaves[0], leaves[1], "gelu", "gate_second", bias=leaves[2]).square().sum().backward()
    leaves64 = [t.detach().double().requires_grad_() for t in (x, w, bias)]
    glu_linear_torch(*leaves64, "gelu", "gate_second").square().sum().backward()
    for a, b in zip(leaves, leaves64):
        torch.testing.assert_close(a.grad, b.grad.float(), rtol=1e-4, atol=1e-4)


def test_glu_linear_validation():
    x, w = torch.randn(2, 8), torch.randn(6, 8)
    with pytest.raises(ValueError, match="w_gate_up must be"):
        K.glu_linear(x, torch.randn(5, 8))
    with pytest.raises(ValueError, match="w_gate_up must be"):
        K.glu_linear(x, torch.randn(6, 7))
    with pytest.raises(ValueError, match="must match x"):
        K.glu_linear(x, w.double())
    with pytest.raises(ValueError, match="bias must be"):
        K.glu_linear(x, w, bias=torch.randn(3))
    with pytest.raises(ValueError, match="unknown layout"):
        K.glu_linear(x, w, layout="separate")
    with pytest.raises(ValueError, match="unknown activation"):
        K.glu_linear(x, w, "relu")


# ---- registrations, torch.compile, the model layer -----------------------------------------------------------------


def test_opcheck():
    ops, x, w = torch.ops.fastllm, torch.randn(2, 3, 8, requires_grad=True), torch.randn(10, 8, requires_grad=True)
    cases = [
        (ops.glu_packed, (torch.randn(3, 10, requires_grad=True), "gelu_tanh", False)),
        (ops.glu_packed_backward, (torch.randn(3, 5), torch.randn(3, 10), "gelu", False)),
        (ops.glu_linear, (x, w, None, "silu", True)),
        (ops.glu_linear, (torch.randn(4, 8), torch.randn(10, 8), torch.randn(10), "gelu", False)),
    ]
    for op, args in cases:
        torch.library.opcheck(op, args)


class GluBlock(torch.nn.Module):
    def __init__(self, d=16, ff=24):
        super().__init__()
        self.up = torch.nn.Linear(d, 2 * ff)

    def forward(self, x):
        h = self.up(x)
        g, u = h.chunk(2, -1)
        fused = K.glu_linear(x, self.up.weight, "gelu_tanh", "gate_second", bias=self.up.bias)
        return K.glu(g, u, "silu") + K.glu_packed(h, "gelu", gate_first=False) + fused


@pytest.mark.parametrize("backend", ["eager", "aot_eager", "inductor"])
def test_torch_compile_fullgraph(backend):
    torch._dynamo.reset()
    model, x = GluBlock(), torch.randn(2, 5, 16)
    want = model(x)
    want_grads = torch.autograd.grad(want.square().sum(), list(model.parameters()))
    got = torch.compile(model, fullgraph=True, backend=backend)(x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    for a, b in zip(torch.autograd.grad(got.square().sum(), list(model.parameters())), want_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(("layout", "mlp_bias"), [("gate_second", True), ("gate_first", False)])
def test_model_logits_fused_mlp(monkeypatch, layout, mlp_bias):
    """Inference logits with glu_linear (auto dispatch under the interpreter) equal the reference path's."""
    cfg = dict(n_layer=2, d_model=32, n_head=4, d_ff=48, vocab_size=97, max_seq_len=64)
    model = Transformer(ModelConfig.from_name("llm-scratch-v2", **cfg, glu_layout=layout, mlp_bias=mlp_bias)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    ids = torch.randint(0, 97, (2, 9))
    calls = []
    launcher = _dispatch.triton_ops()["glu_linear"]
    monkeypatch.setitem(_dispatch._TRITON_OPS, "glu_linear", lambda *a, **kw: calls.append(1) or launcher(*a, **kw))
    monkeypatch.setenv("FASTLLM_KERNELS", "reference")
    with torch.no_grad():
        want = model(ids)
    assert not calls
    monkeypatch.setenv("FASTLLM_KERNELS", "auto")  # Triton where a kernel is registered, the reference elsewhere
    with torch.no_grad():
        got = model(ids)
    assert len(calls) == cfg["n_layer"]
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    model(ids).sum().backward()  # recording autograd: the unfused path, whatever the dispatch
    assert len(calls) == cfg["n_layer"]
    if layout == "gate_second":  # the fused path traces too (the dispatch decision is taken while tracing)
        torch._dynamo.reset()
        with torch.no_grad():
            compiled = torch.compile(model, fullgraph=True, backend="aot_eager")(ids)
        assert len(calls) == 2 * cfg["n_layer"]
        torch.testing.assert_close(compiled, got, rtol=1e-5, atol=1e-5)
