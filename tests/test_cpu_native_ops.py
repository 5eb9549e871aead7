"""fastllm's CPU kernels as C++ torch operators (`torch.ops.fastllm_cpu.*`, csrc/torch/ops.cpp, built and loaded by
`fastllm.kernels.cpu.native`): for every op, the same bits as the `fastllm::` op (whose CPU path is the Python
launcher and the same kernel) on odd shapes, strided inputs and every option; bad input raising the launcher's own
error (the operators hand every call they do not fully check to the `fastllm::` op); the calls they leave to torch;
the thread count of `decode_threads`; the switch; the build cache; and the compiled decode step that calls them."""

import os
import subprocess
import sys

import pytest
import torch
from test_cpu_attention import CASES as SWA_CASES
from test_cpu_attention import inputs as swa_inputs
from test_cpu_mla import CASES as MLA_CASES
from test_cpu_mla import inputs as mla_inputs
from torch._dynamo.utils import counters

import fastllm.kernels as K
from fastllm import engine
from fastllm.kernels import cpu
from fastllm.kernels.cpu import native
from fastllm.kernels.reference.linear import pack_weight
from fastllm.models import ModelConfig, Transformer
from fastllm.quant import quantize

pytestmark = pytest.mark.usefixtures("native_ops")

NATIVE, PYTHON = torch.ops.fastllm_cpu if hasattr(torch.ops, "fastllm_cpu") else None, torch.ops.fastllm


def same(a, b):
    a, b = (a,) if torch.is_tensor(a) else a, (b,) if torch.is_tensor(b) else b
    return len(a) == len(b) and all(x.dtype == y.dtype and torch.equal(x, y) for x, y in zip(a, b))


def both(name, *args):
    """(fastllm_cpu::<name>(*args), fastllm::<name>(*args))."""
    return getattr(torch.ops.fastllm_cpu, name)(*args), getattr(PYTHON, name)(*args)


def linear_args(M, N, K_, dtype, seed, bias):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(M, K_, generator=g).to(dtype)
    w = torch.randn(N, K_, generator=g).to(dtype)
    b = torch.randn(N, generator=g).to(dtype) if bias else None
    return x, w, b


LINEAR_SHAPES = [(1, 37, 19), (3, 203, 130), (8, 9, 64), (16, 70, 257), (2, 64, 128), (20, 11, 33)]  # (M, N, K)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("bias", [False, True])
def test_linears_equal_the_python_ops(dtype, bias):
    for i, (M, N, K_) in enumerate(LINEAR_SHAPES):  # M = 20 is past both kernels' row limits: torch serves it
        x, w, b = linear_args(M, N, K_, dtype, i, bias)
        codes, scale = K.quantize_int8(w.float())
        packed, vnni = K.pack_int8(codes), K.pack_int8(codes, layout="vnni")
        for name, args in [
            ("linear", (x, w, b)),
            ("linear_packed", (x, pack_weight(w), b, N)),
            ("linear_packed", (x, pack_weight(w, layout="vnni2"), b, N)),  # bf16: the kernel; fp32: the reference
            ("int8_linear", (x, packed, scale, b)),
            ("w8a8_linear", (x, packed, scale, b)),
            ("w8a8_linear", (x, vnni, scale, b)),
            ("int8_linear", (x, vnni, scale, b)),  # weight-only with the VNNI layout: the reference serves it
        ]:
            got, want = both(name, *args)
            assert same(got, want), (name, M, N, K_)
        x3 = torch.randn(2, K_ + 3, M, dtype=torch.float32).to(dtype).transpose(1, 2)[:, :, 1 : K_ + 1]  # strided
        got, want = both("int8_linear", x3, packed, scale, b)
        assert same(got, want) and got.shape == (2, M, N)
        got, want = both("linear", x3, w.t().contiguous().t(), b)  # a column-major weight
        assert same(got, want)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("biases", [False, True])
def test_swa_decode_equals_the_python_op(dtype, biases):
    for case in SWA_CASES:
        for seed in range(2):
            q, k, v, L, window, scale, sinks, alibi, rel = swa_inputs(case, dtype, seed, biases)
            args = (q, k, v, L.to(torch.int32), -1 if window is None else window, scale, sinks, alibi, rel)
            got, want = both("swa_decode", *args)
            assert same(got, want), (case, seed)
    q, k, v, L, window, scale, sinks, _, _ = swa_inputs(SWA_CASES[1], dtype, 0)
    kh, vh = k.transpose(1, 2).contiguous().transpose(1, 2), v.transpose(1, 2).contiguous().transpose(1, 2)
    assert same(*both("swa_decode", q, kh, vh, L, -1, scale, 0, None, None))  # head-major caches (the models')


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_mla_decode_equals_the_python_op(dtype):
    for case in MLA_CASES:
        for seed in range(2):
            q, kv, L, R, scale, table = mla_inputs(case, dtype, seed)
            got, want = both("mla_decode", q, kv, L, R, scale, table)
            assert same(got, want), (case, seed)
            if table is not None:
                got, want = both("mla_decode", q, kv, L, R, scale, table.t().contiguous().t())  # a strided table
                assert same(got, want)


def sample_args(logits, temperature=0.0, top_k=0, top_p=1.0, min_p=0.0, penalty=1.0, prev=None, flag=None):
    B = logits.shape[0]
    row = lambda v, t: torch.full((B,), v, dtype=t)  # noqa: E731
    params = (row(temperature, torch.float32), row(top_k, torch.int64), row(top_p, torch.float32),
              row(min_p, torch.float32), row(penalty, torch.float32))  # fmt: skip
    return (logits, torch.tensor([7]), *params, prev, flag)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_sample_philox_equals_the_python_op(dtype):
    """Greedy calls on the C++ argmax (the first index on ties, filters ignored), every other call (a temperature, a
    penalty over prev_tokens) through the fastllm:: op: the same ids."""
    g = torch.Generator().manual_seed(0)
    for B, V in ((1, 1), (3, 50257), (5, 37), (0, 9)):
        logits = torch.randn(B, V, generator=g).to(dtype)
        if B > 2:
            logits[1, 3] = logits[1, V - 2] = logits[1].max() + 1  # a tie: the first index wins
        prev = torch.randint(-1, V, (B, 6), generator=g)
        for kw in (dict(), dict(top_k=3, top_p=0.5, min_p=0.1), dict(temperature=0.7), dict(prev=prev, penalty=1.3)):
            got, want = both("sample_philox", *sample_args(logits, **kw))
            assert same(got, want), kw
        if B:
            assert torch.equal(torch.ops.fastllm_cpu.sample_philox(*sample_args(logits)), logits.float().argmax(-1))
    bad = torch.tensor([[0.0, 1.0, 2.0], [0.0, float("nan"), 1.0], [float("inf"), 0.0, 0.0]]).to(dtype)
    flag = torch.zeros(1, dtype=torch.int32)  # where the operator records what the Python op raises
    assert torch.ops.fastllm_cpu.sample_philox(*sample_args(bad, flag=flag)).tolist() == [2, 1, 0]
    with pytest.raises(ValueError, match=r"^sample: logits contain NaN; logits contain \+inf$"):
        K.check_sample_flag(flag)
    wide = torch.randn(4, 300, generator=g)[:, ::3]  # strided rows, fp64: the Python op serves them
    for logits in (wide, wide.double()):
        assert same(*both("sample_philox", *sample_args(logits)))


def test_bad_input_raises_the_launchers_errors():
    """Every call the operator does not fully check goes to the fastllm:: op: the same exception and message."""
    x, w, b = linear_args(3, 70, 257, torch.float32, 0, True)
    codes, scale = K.quantize_int8(w)
    packed = K.pack_int8(codes)
    q, k, v, L, window, sc, sinks, alibi, rel = swa_inputs(SWA_CASES[2], torch.float32, 0, biases=True)
    C = k.shape[1]
    mq, kv, mL, R, msc, table = mla_inputs(MLA_CASES[3], torch.float32, 0)
    cq, ckv, cL, cR, csc, _ = mla_inputs(MLA_CASES[1], torch.float32, 0)
    bad = [
        ("int8_linear", (x, packed[:, :1], scale, b)),
        ("int8_linear", (x, packed, scale.double(), b)),
        ("int8_linear", (x, packed, scale, b[:3])),
        ("w8a8_linear", (x[:, :200], packed, scale, None)),
        ("w8a8_linear", (x[:, :200], K.pack_int8(codes, layout="vnni"), scale, None)),
        ("w8a8_linear", (x, K.pack_int8(codes, layout="vnni")[:, :-1], scale, None)),
        ("linear_packed", (x, pack_weight(w).double(), None, 70)),
        ("linear_packed", (x, pack_weight(w), None, 80)),
        ("swa_decode", (q, k.double(), v, L, window, sc, sinks, None, None)),
        ("swa_decode", (q, k[:, :, :1], v, L, window, sc, sinks, None, None)),
        ("swa_decode", (q, k, v, L, window, sc, C, None, None)),
        ("swa_decode", (q, k, v, L[:1], window, sc, sinks, None, None)),
        ("swa_decode", (q, k, v, -L, window, sc, sinks, None, None)),
        ("swa_decode", (q, k, v, L.float(), window, sc, sinks, None, None)),
        ("swa_decode", (q, k, v, torch.full_like(L, C + 1), -1, sc, sinks, None, None)),
        ("swa_decode", (q, k, v, torch.full_like(L, C + 1), C, sc, sinks, None, None)),
        ("swa_decode", (q, k, v, L, window, sc, sinks, alibi[:2], None)),
        ("swa_decode", (q, k, v, L, window, sc, sinks, None, rel[:, :0])),
        ("swa_decode", (q, torch.randn(*k.shape[:3], 2 * k.shape[3])[..., ::2], v, L, window, sc, sinks, None, None)),
        ("mla_decode", (mq, kv, mL, R, msc, torch.full_like(table, kv.shape[0]))),
        ("mla_decode", (mq, kv, mL, R, msc, table[:, :0])),
        ("mla_decode", (mq, kv, torch.full_like(mL, -1), R, msc, table)),
        ("mla_decode", (cq, ckv, torch.full_like(cL, ckv.shape[1] + 1), cR, csc, None)),
        ("mla_decode", (cq, ckv.bfloat16(), cL, cR, csc, None)),
        ("sample_philox", sample_args(torch.tensor([[0.0, float("nan"), 1.0]]))),
        ("sample_philox", sample_args(torch.tensor([[0.0, float("inf"), 1.0]]))),
        ("sample_philox", sample_args(torch.full((2, 3), -float("inf")))),
        ("sample_philox", sample_args(torch.randn(2, 5), top_k=-1)),
        ("sample_philox", sample_args(torch.randn(2, 5), top_p=1.5)),
        ("sample_philox", sample_args(torch.randn(2, 5), penalty=0.0, prev=torch.zeros(2, 1, dtype=torch.long))),
        ("sample_philox", sample_args(torch.randn(2, 5), temperature=float("nan"))),
    ]
    for name, args in bad:
        with pytest.raises(Exception) as python_error:
            getattr(PYTHON, name)(*args)
        with pytest.raises(type(python_error.value)) as native_error:
            getattr(torch.ops.fastllm_cpu, name)(*args)
        assert str(native_error.value) == str(python_error.value), name


def test_window_zero_and_empty_calls():
    q, k, v, L, _, sc, _, _, _ = swa_inputs(SWA_CASES[1], torch.float32, 0)
    with pytest.raises(ValueError, match="window must be None or >= 1"):
        torch.ops.fastllm_cpu.swa_decode(q, k, v, L, 0, sc, 0, None, None)
    assert same(*both("swa_decode", q[:0], k[:0], v[:0], L[:0], -1, sc, 0, None, None))
    x, w, b = linear_args(1, 5, 7, torch.float32, 0, False)
    assert same(*both("linear", x[:0], w, b))


def test_decode_threads_sets_the_operators_thread_count(monkeypatch):
    """Inside decode_threads torch runs on one thread and the operators on the threads torch had, as the launchers
    do; the results do not depend on the count."""
    x, w, b = linear_args(4, 203, 130, torch.float32, 0, True)
    codes, scale = K.quantize_int8(w)
    packed = K.pack_int8(codes)
    want = torch.ops.fastllm_cpu.int8_linear(x, packed, scale, b)
    torch_threads = torch.get_num_threads()
    try:
        torch.set_num_threads(3)
        with cpu.decode_threads():
            assert torch.get_num_threads() == 1 and cpu.threads() == 3
            assert same(torch.ops.fastllm_cpu.int8_linear(x, packed, scale, b), want)
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(torch_threads)


def test_switch_and_dispatch(monkeypatch):
    device = torch.device("cpu")
    assert native.loaded() and native.op("int8_linear", device) is torch.ops.fastllm_cpu.int8_linear
    monkeypatch.setenv("FASTLLM_NATIVE_OPS", "0")
    assert native.op("int8_linear", device) is torch.ops.fastllm.int8_linear
    monkeypatch.setenv("FASTLLM_NATIVE_OPS", "1")
    monkeypatch.setenv("FASTLLM_KERNELS", "reference")  # the references: the Python ops, which run them
    assert native.op("swa_decode", device) is torch.ops.fastllm.swa_decode
    assert native.op("mla_decode", torch.device("meta")) is torch.ops.fastllm.mla_decode


def test_build_is_cached_and_failures_are_reported(monkeypatch, tmp_path):
    first = native._build()
    with pytest.MonkeyPatch.context() as m:  # the cache: the second build compiles nothing
        m.setattr(native.subprocess, "run", lambda *a, **k: pytest.fail("compiled again"))
        assert native._build() == first
    monkeypatch.setenv("FASTLLM_CACHE", str(tmp_path))
    monkeypatch.setenv("CXX", "false")  # a compiler that fails
    with pytest.raises(RuntimeError, match="failed"):
        native._build()
    assert not any(tmp_path.rglob("*.so"))  # nothing half-written is left to be loaded later
    monkeypatch.setattr(native, "SOURCES", (tmp_path / "missing.cpp",))
    with pytest.raises(RuntimeError, match="sources not found"):
        native._build()


def ops_in_compiled_step(model, prompts) -> set[str]:
    """The names the profiler records for one call of the model's compiled decode step after prefilling prompts."""
    step = engine.compiled_decode_step(model, True)
    cache = model.new_cache(len(prompts), 32, max_chunk=1)
    engine.prefill(model, [torch.tensor(p) for p in prompts], cache)
    with torch.no_grad(), torch.profiler.profile() as prof:  # as the engine calls it
        step(model, torch.arange(1, len(prompts) + 1), cache)
    return {e.key for e in prof.key_averages()}


def test_compiled_int8_step_calls_the_operators():
    """compile=True on the CPU, int8 weights: the compiled step's linears and attention are fastllm_cpu operators
    (what the profiler records), and the tokens equal the eager step's on the Python ops."""
    torch.manual_seed(0)
    cfg = ModelConfig.from_name("gpt2", n_layer=2, d_model=64, n_head=4, vocab_size=97, max_seq_len=64)
    model = quantize(Transformer(cfg).eval())
    prompts = [torch.randint(0, 97, (n,)).tolist() for n in (3, 7)]
    greedy = engine.SamplingParams(temperature=0)
    with pytest.MonkeyPatch.context() as m:
        m.setenv("FASTLLM_NATIVE_OPS", "0")
        eager, _ = engine.generate(model, prompts, 10, sampling=greedy)
    compiled, _ = engine.generate(model, prompts, 10, sampling=greedy, compile=True)
    assert compiled == eager
    names = ops_in_compiled_step(model, prompts)
    assert {"fastllm_cpu::int8_linear", "fastllm_cpu::swa_decode"} <= names, sorted(names)
    assert not any(n.startswith("fastllm::") for n in names)


def test_compiled_bf16_swa_mla_step_calls_the_operators():
    """The SWA-MLA class compiled on the CPU (bf16, bias-free: packed linears, latent MLA decode, sliding-window
    layers): every fastllm op in the step is a fastllm_cpu operator, and the tokens equal the eager step's."""
    torch.manual_seed(0)
    cfg = ModelConfig.from_name(
        "swa-mla-262m", n_layer=3, d_model=64, n_head=4, vocab_size=97, kv_lora_rank=24,
        qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16, max_seq_len=64,
    )  # fmt: skip
    model = Transformer(cfg).eval().to(torch.bfloat16)
    prompts = [torch.randint(0, 97, (n,)).tolist() for n in (5, 9)]
    greedy = engine.SamplingParams(temperature=0)
    eager, _ = engine.generate(model, prompts, 8, sampling=greedy)
    compiled, _ = engine.generate(model, prompts, 8, sampling=greedy, compile=True)
    assert compiled == eager
    names = ops_in_compiled_step(model, prompts)
    want = {"fastllm_cpu::linear_packed", "fastllm_cpu::mla_decode", "fastllm_cpu::swa_decode"}
    assert want <= names and not any(n.startswith("fastllm::") for n in names), sorted(names)


def test_compiled_greedy_step_samples_and_records_in_its_graph():
    """Greedy decoding compiled on the CPU runs `step.greedy`: one graph that decodes, samples on the C++ argmax
    (fastllm_cpu::sample_philox) and records the ids (EOS, pad masking, the history). Rows stopping at different
    steps give the eager tokens; NaN logits first met inside the graph raise the sampler's error."""
    torch.manual_seed(0)
    model = Transformer(ModelConfig.from_name("gpt2", n_layer=2, d_model=64, n_head=4, vocab_size=97)).eval()
    prompts = [torch.randint(0, 97, (n,)).tolist() for n in (3, 7)]
    greedy = engine.SamplingParams(temperature=0)
    free, _ = engine.generate(model, prompts, 12, sampling=greedy)
    eos = free[0][4]
    eager, _ = engine.generate(model, prompts, 12, sampling=greedy, eos_ids=[eos])
    calls = []
    step = engine.compiled_decode_step(model, True)
    real = step.greedy
    step.greedy = lambda *a: calls.append(1) or real(*a)
    try:
        compiled, _ = engine.generate(model, prompts, 12, sampling=greedy, eos_ids=[eos], compile=True)
    finally:
        step.greedy = real
    assert compiled == eager and len(eager[0]) == free[0].index(eos) + 1 and calls
    state = engine.DecodeState([torch.tensor(p) for p in prompts], 4, None, torch.device("cpu"), None, 0, width=256)
    cache = model.new_cache(2, 32, max_chunk=1)
    engine.prefill(model, [torch.tensor(p) for p in prompts], cache)
    with torch.no_grad(), torch.profiler.profile() as prof:
        ids = step.greedy(model, torch.tensor([1, 2]), cache, state)
    names = {e.key for e in prof.key_averages()}
    assert "fastllm_cpu::sample_philox" in names and not any(n.startswith("fastllm::") for n in names), sorted(names)
    assert torch.equal(state.tokens[[0, 1], [3, 7]], ids) and state.pos.flatten().tolist() == [4, 8]
    with torch.no_grad():
        model.pos_emb.weight[8] = float("nan")  # the second decode step's position: its logits are NaN
    with pytest.raises(ValueError, match="NaN"):
        engine.generate(model, [prompts[0]], 8, sampling=greedy, compile=True)


def test_compiled_step_skips_guards_only_where_they_held(monkeypatch):
    """The compiled CPU step evaluates dynamo's guards on a decode loop's first two calls and skips them on the rest
    (same cache, same inputs, no graph compiled by the previous call); a new batch size or cache recompiles through
    the guards, and every call's tokens equal the eager step's."""
    stances = []
    real = torch.compiler.set_stance
    monkeypatch.setattr(torch.compiler, "set_stance", lambda *a, **k: stances.append(k) or real(*a, **k))
    torch.manual_seed(0)
    model = Transformer(ModelConfig.from_name("gpt2", n_layer=2, d_model=64, n_head=4, vocab_size=97)).eval()
    greedy = engine.SamplingParams(temperature=0)
    for rows in ((3, 7), (5,), (2, 4, 6), (3, 7)):
        prompts = [torch.randint(0, 97, (n,)).tolist() for n in rows]
        eager, _ = engine.generate(model, prompts, 10, sampling=greedy)
        stances.clear()
        graphs = counters["stats"]["unique_graphs"]
        compiled, _ = engine.generate(model, prompts, 10, sampling=greedy, compile=True)
        assert compiled == eager
        guarded = 2 if counters["stats"]["unique_graphs"] > graphs else 1  # the first call compiled, or its guards held
        assert stances == [dict(skip_guard_eval_unsafe=True)] * (9 - guarded)  # 9 decode steps


SANITIZE = "-fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer -g -O1"


def test_operators_under_asan_and_ubsan(tmp_path):
    """The operators' own code (argument checks, fallbacks, kernel calls), built with ASan + UBSan into a cache of
    its own, through this file's equality, error and thread tests in a child interpreter with the ASan runtime
    preloaded (first, and libstdc++ with it, so its exception interceptor resolves): no report, every test passing.
    (The kernels behind them run under the sanitizers in the C++ tests, CMakeLists.txt.)"""
    if os.environ.get("FASTLLM_SANITIZED_CHILD"):
        pytest.skip("inside the sanitized run")
    cxx = native._compiler()
    runtime = [subprocess.run([cxx, f"-print-file-name={lib}"], capture_output=True, text=True).stdout.strip()
               for lib in ("libasan.so", "libstdc++.so.6")]  # fmt: skip
    if not all(os.path.isabs(p) for p in runtime):
        pytest.skip(f"{cxx} has no ASan runtime")
    env = dict(os.environ, LD_PRELOAD=" ".join(runtime), ASAN_OPTIONS=f"detect_leaks=0:log_path={tmp_path}/report")
    env.update(FASTLLM_CACHE=str(tmp_path), FASTLLM_NATIVE_FLAGS=SANITIZE, FASTLLM_SANITIZED_CHILD="1")
    tests = "equal or bad_input or window_zero or thread_count"
    cmd = [sys.executable, "-m", "pytest", __file__, "-q", "-x", "-p", "no:cacheprovider", "-k", tests]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    reports = [p.read_text() for p in tmp_path.glob("report*")]
    assert done.returncode == 0 and not reports, done.stdout[-3000:] + "".join(reports)[:3000]
    assert " passed" in done.stdout and "deselected" in done.stdout
    (built,) = tmp_path.rglob("fastllm_cpu_ops.so")
    assert b"__asan_report" in built.read_bytes() and b"__ubsan_handle" in built.read_bytes()  # it was instrumented
