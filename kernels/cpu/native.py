"""fastllm's CPU kernels as C++ torch operators, `torch.ops.fastllm_cpu.<name>` (csrc/torch/ops.cpp).

The `fastllm::` inference ops run their CPU kernels from Python: the launchers' checks, then the kernel through
pybind11. In a decode step (~60 such calls a token) that Python costs 20-40 us a call once the weights streamed
since the previous call have evicted the interpreter's state from the caches. The operators here have the same
schemas and results (bit for bit: one kernel) and run the kernel straight from torch's dispatcher, from eager code
and from a graph compiled by inductor alike; a call they do not fully check goes to the `fastllm::` op, whose
launcher raises the precise error or runs the reference.

They are C++ against the installed torch's headers, built on first `load()` (about 10 s, one compiler call) into a
cache (`$FASTLLM_CACHE`, default ~/.cache/fastllm) keyed by the sources, torch's version and the compiler; later
loads take milliseconds. The sources come from the source tree (the README's editable install); where they, a C++
compiler or the build are missing, `load()` warns once and returns False, and the `fastllm::` ops serve every call.
`FASTLLM_NATIVE_OPS=0` turns them off; `FASTLLM_NATIVE_FLAGS` adds compiler flags (a build of its own, as the
sanitizer test's). The engine loads them for its compiled CPU decode step.
"""

import ctypes
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import warnings
from pathlib import Path

import torch

from fastllm import _cpu
from fastllm.kernels import _dispatch

OPS = (
    "int8_linear", "w8a8_linear", "linear", "linear_packed", "grouped_linear", "swa_decode", "mla_decode",
    "sample_philox",
)  # fmt: skip
_CSRC = Path(__file__).resolve().parents[2] / "csrc"
_PARTS = ("torch/ops.cpp", "cpu/api.h", "cpu/linear.h", "cpu/attention.h", "cpu/sampling.h")  # ops.cpp first
SOURCES = tuple(_CSRC / p for p in _PARTS)

_lock = threading.Lock()
_loaded: bool | None = None  # None: not tried yet


def enabled() -> bool:
    """Whether the operators may be used (FASTLLM_NATIVE_OPS is not "0")."""
    return os.environ.get("FASTLLM_NATIVE_OPS", "1") != "0"


def loaded() -> bool:
    """Whether the operators are loaded (no build)."""
    return bool(_loaded)


def load() -> bool:
    """Builds (once per cache) and loads the operators; True when they are ready. Failures warn once."""
    global _loaded
    with _lock:
        if _loaded is None and enabled():
            try:
                _load(_build())
                _loaded = True
            except (OSError, RuntimeError, subprocess.SubprocessError) as e:
                _loaded = False
                warnings.warn(f"fastllm: the C++ torch operators are unavailable, the Python launchers serve: {e}")
    return bool(_loaded) and enabled()


@torch.compiler.assume_constant_result
def use(name: str, device: torch.device) -> bool:
    """Whether a call of `fastllm::<name>` on `device` should be the operator's: loaded, enabled, and the C++
    kernel serves the call (`_dispatch.use_cpu_kernel`). Read once while torch.compile traces."""
    return bool(_loaded) and device.type == "cpu" and enabled() and _dispatch.use_cpu_kernel(name, device)


def op(name: str, device: torch.device):
    """`torch.ops.fastllm_cpu.<name>` where `use(name, device)`, else `torch.ops.fastllm.<name>`."""
    return getattr(torch.ops.fastllm_cpu if use(name, device) else torch.ops.fastllm, name)


def _cache_dir() -> Path:
    root = os.environ.get("FASTLLM_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "fastllm")
    return Path(root) / "torch_ops"


def _compiler() -> str:
    cxx = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")
    if not cxx:
        raise RuntimeError("no C++ compiler found (set CXX)")
    return cxx


def _build() -> Path:
    """The operator library for this torch, compiled unless the cache has it."""
    missing = [str(p) for p in SOURCES if not p.is_file()]
    if missing:
        raise RuntimeError(f"sources not found (they ship with the source tree): {', '.join(missing)}")
    from torch.utils import cpp_extension

    cxx = _compiler()
    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    flags = ["-O2", "-std=c++20", "-shared", "-fPIC", "-fvisibility=hidden", f"-D_GLIBCXX_USE_CXX11_ABI={abi}"]
    flags += os.environ.get("FASTLLM_NATIVE_FLAGS", "").split()
    flags += [f"-isystem{p}" for p in cpp_extension.include_paths()]
    libs = [f"-L{p}" for p in cpp_extension.library_paths()] + ["-lc10", "-ltorch_cpu", "-ltorch"]
    key = hashlib.sha256()
    for part in (torch.__version__, sys.version, cxx, *flags, *(p.read_bytes() for p in SOURCES)):
        key.update(part if isinstance(part, bytes) else part.encode())
    out = _cache_dir() / key.hexdigest()[:16] / "fastllm_cpu_ops.so"
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)  # another process may build the same file at once
    os.close(fd)
    try:
        cmd = [cxx, *flags, str(SOURCES[0]), "-o", tmp, *libs]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-4000:]}")
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


def _load(path: Path) -> None:
    from fastllm.kernels import _ops_inference

    torch.ops.load_library(str(path))
    get = ctypes.pythonapi.PyCapsule_GetPointer
    get.restype, get.argtypes = ctypes.c_void_p, [ctypes.py_object, ctypes.c_char_p]
    torch.ops.fastllm_cpu._bind(get(_cpu._api, b"fastllm._cpu.api"))
    for name in OPS:
        torch.library.register_fake("fastllm_cpu::" + name)(_ops_inference.FAKES[name])
