"""Test-wide setup: Triton kernels run on CPU tensors through Triton's interpreter.

`TRITON_INTERPRET=1` must be in the environment before `triton` is first imported, so it is set here, at collection.
Under the interpreter the dispatch rule of DESIGN.md would send every op of every model test through an interpreted
kernel (~0.5 ms per program instance), so each test runs with one backend forced:

- tests marked `triton` (kernel tests: `pytestmark = pytest.mark.triton`) run with `FASTLLM_KERNELS=triton`, so a
  kernel that cannot run fails loudly instead of falling back to the reference;
- every other test runs with `FASTLLM_KERNELS=reference`: the eager references, with fastllm's C++ CPU kernels
  (fastllm._cpu) off too; tests/test_cpu_kernels.py runs models on the C++ kernels, as users get them on a CPU.

A test may still set either variable itself with `monkeypatch`; that wins over the default set here.

`python -m pytest` from the checkout's root puts the root first on sys.path, where the top-level `kernels/` folder
(installed as `fastllm.kernels`) would shadow Hugging Face's `kernels` package that transformers imports: the
root comes off sys.path here (fastllm itself imports through its installed, editable, finder).
"""

import os
import sys

os.environ.setdefault("TRITON_INTERPRET", "1")
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _ROOT]
# --import-mode=importlib (pyproject) puts no test folder on sys.path: shared helpers (training_setup.py) need it
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import pytest  # noqa: E402

from fastllm import _cpu  # noqa: E402

# The instruction sets of fastllm's C++ CPU kernels that this CPU runs (tests parametrize the `isa` fixture with them)
CPU_ISAS = [isa for isa in ("avx512bf16", "avx512", "avx2", "generic") if _cpu.force_isa(isa)]
_cpu.force_isa("")


@pytest.fixture(autouse=True)
def _kernel_backend(request, monkeypatch):
    monkeypatch.setenv("FASTLLM_KERNELS", "triton" if request.node.get_closest_marker("triton") else "reference")
    # fastllm's C++ torch operators (kernels/cpu/native.py) stay off unless a test asks for them (`native_ops`): once
    # one test (or the engine's compiled step) has loaded them, the results would otherwise depend on test order
    monkeypatch.setenv("FASTLLM_NATIVE_OPS", "0")


@pytest.fixture
def isa(request):
    """Forces the C++ CPU kernels' instruction set to request.param (one of CPU_ISAS) for the test."""
    assert _cpu.force_isa(request.param)
    yield request.param
    _cpu.force_isa("")


@pytest.fixture
def cpu_kernels(monkeypatch):
    """The dispatch users get on the CPU: C++ kernels on, the Triton interpreter off (the default here forces
    `reference`)."""
    monkeypatch.setenv("FASTLLM_KERNELS", "auto")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)


@pytest.fixture
def native_ops(cpu_kernels, monkeypatch):
    """`cpu_kernels` with fastllm's C++ torch operators loaded and on (built into the cache on first use)."""
    from fastllm.kernels.cpu import native

    monkeypatch.setenv("FASTLLM_NATIVE_OPS", "1")
    assert native.load(), "the C++ torch operators did not build or load"


def assert_thread_invariant(call):
    """call() (a tensor or a tuple of them) gives the same bits on 1, 2 or 3 torch threads (the C++ kernels run on
    torch's intra-op count outside decode_threads) and from two Python threads calling at once: the kernels split
    work so that each output is computed whole by one thread."""
    import threading

    import torch

    def same(a, b):
        a, b = (a,) if torch.is_tensor(a) else a, (b,) if torch.is_tensor(b) else b
        return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))

    torch_threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        want = call()
        for n in (2, 3):
            torch.set_num_threads(n)
            assert same(call(), want), f"{n} threads"
    finally:
        torch.set_num_threads(torch_threads)
    out = [None, None]

    def run(i):
        out[i] = [call() for _ in range(5)]

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(same(got, want) for results in out for got in results)
