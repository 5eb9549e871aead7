"""The one place where fastllm.kernels chooses a backend for an op call (the rule of DESIGN.md).

Rule, evaluated at every call from the op's device and the environment:

- `FASTLLM_KERNELS=reference`: the eager reference, always.
- `FASTLLM_KERNELS=triton`: the Triton launcher, or a clear error when it cannot run (Triton not importable, no
  Triton kernel registered for the op yet, or non-CUDA tensors without `TRITON_INTERPRET=1`). Never a fallback.
- unset (or `auto`): the Triton launcher when the tensors are on CUDA or `TRITON_INTERPRET=1` is set, Triton imports
  and a launcher is registered for the op; otherwise the reference. A CUDA call that falls back to the reference
  warns once per op.

C++ CPU kernels (`fastllm._cpu`, launchers in `fastllm.kernels.cpu`) are a separate axis: an op that has one
(`CPU_OPS`) runs it for CPU tensors unless `FASTLLM_KERNELS=reference`; `FASTLLM_KERNELS=triton` does not affect
the ops that have no Triton kernel (`linear`, `linear_packed`, `int8_linear`) and `TRITON_INTERPRET=1` neither. An
op with both (`swa_decode`, `mla_decode`; the samplers, whose all-greedy calls use a C++ argmax) takes the C++
kernel where the rule above picks the reference: CPU tensors without `TRITON_INTERPRET=1`, unless
`FASTLLM_KERNELS=reference`.

Triton launchers are registered by op name with `register_triton`; `fastllm.kernels.triton` (imported lazily, only
when a call might use Triton) registers its launchers when it is imported. An op without a registered launcher
simply has no Triton path yet: auto mode uses the reference for it (so `TRITON_INTERPRET=1` does not disturb the
reference ops), and a forced `FASTLLM_KERNELS=triton` raises NotImplementedError naming the op. A launcher takes
exactly the arguments of the reference function the op calls (see `fastllm.kernels._ops`, `_ops_inference`) and
returns the same outputs.
"""

import importlib
import importlib.util
import os
import warnings
from collections.abc import Callable
from typing import TypeVar

import torch

ENV_FORCE = "FASTLLM_KERNELS"
ENV_INTERPRET = "TRITON_INTERPRET"
BACKENDS = ("reference", "triton")
OPS = (
    "sliding_window_attention",
    "sliding_window_attention_backward",
    "swa_decode",
    "mla_decode",
    "glu",
    "glu_backward",
    "glu_packed",
    "glu_packed_backward",
    "glu_linear",
    "sample_from_noise",
    "sample_philox",
)

# ops with a C++ CPU kernel
CPU_OPS = (
    "int8_linear",
    "w8a8_linear",
    "linear",
    "linear_packed",
    "grouped_linear",
    "swa_decode",
    "mla_decode",
    "sample_philox",
    "sample_from_noise",
)

F = TypeVar("F", bound=Callable)
_TRITON_OPS: dict[str, Callable] = {}  # op name -> launcher; filled by fastllm.kernels.triton
_triton_state: tuple[bool, str] | None = None  # (usable, why not), probed once
_warned: set[str] = set()


def register_triton(op: str) -> Callable[[F], F]:
    """Decorator: register `fn` as the Triton launcher of `op` (one of `OPS`)."""
    if op not in OPS:
        raise ValueError(f"register_triton: unknown op {op!r}; expected one of {OPS}")

    def deco(fn: F) -> F:
        _TRITON_OPS[op] = fn
        return fn

    return deco


def triton_ops() -> dict[str, Callable]:
    """The registered Triton launchers (a copy), after loading `fastllm.kernels.triton` if Triton imports."""
    triton_status()
    return dict(_TRITON_OPS)


def forced_backend() -> str | None:
    value = os.environ.get(ENV_FORCE, "").strip().lower()
    if value in ("", "auto"):
        return None
    if value not in BACKENDS:
        raise ValueError(f"{ENV_FORCE}={value!r} is not understood; use 'reference', 'triton', 'auto' or unset it")
    return value


def interpret_mode() -> bool:
    return os.environ.get(ENV_INTERPRET, "0").strip() not in ("", "0")


def triton_status() -> tuple[bool, str]:
    """(True, "") when Triton imports; then also imports fastllm.kernels.triton (if present) to load its launchers."""
    global _triton_state
    if _triton_state is None:
        try:
            importlib.import_module("triton")
        except Exception as e:  # ImportError, or a broken install that fails while importing
            _triton_state = (False, f"import triton failed: {type(e).__name__}: {e}")
        else:
            _triton_state = (True, "")
            if importlib.util.find_spec("fastllm.kernels.triton") is not None:
                importlib.import_module("fastllm.kernels.triton")  # a broken kernel package must fail loudly
    return _triton_state


def backend_for(op: str, device: torch.device) -> str:
    """'reference' or 'triton' for a call of `op` on tensors on `device`; raises when a forced path cannot run."""
    if op not in OPS:
        raise ValueError(f"unknown fastllm op {op!r}; expected one of {OPS}")
    forced = forced_backend()
    if forced == "reference":
        return "reference"
    if forced == "triton":
        usable, why = triton_status()
        if not usable:
            raise RuntimeError(f"{ENV_FORCE}=triton but Triton cannot be used ({why}); set {ENV_FORCE}=reference")
        if op not in _TRITON_OPS:
            raise NotImplementedError(f"the Triton kernel for {op} is not implemented yet; set {ENV_FORCE}=reference")
        if device.type != "cuda" and not interpret_mode():
            raise RuntimeError(
                f"{ENV_FORCE}=triton but {op} got {device.type} tensors; Triton kernels need CUDA "
                f"tensors or {ENV_INTERPRET}=1 (the CPU interpreter)"
            )
        return "triton"
    if device.type == "cuda" or interpret_mode():
        usable, why = triton_status()
        if usable and op in _TRITON_OPS:
            return "triton"
        if device.type == "cuda" and op not in _warned:
            _warned.add(op)
            reason = why if not usable else "no Triton kernel is registered for it yet"
            warnings.warn(f"fastllm.kernels.{op}: using the eager reference on CUDA ({reason})", stacklevel=3)
    return "reference"


def pick(op: str, device: torch.device, reference: Callable) -> Callable:
    """The implementation to call: `reference` or the registered Triton launcher of `op`."""
    return reference if backend_for(op, device) == "reference" else _TRITON_OPS[op]


def use_cpu_kernel(op: str, device: torch.device) -> bool:
    """Whether a call of `op` (one of CPU_OPS) on `device` runs fastllm's C++ CPU kernel (for an op with a Triton
    kernel too: only where the rule above picks the reference)."""
    if op not in CPU_OPS:
        raise ValueError(f"{op!r} has no C++ CPU kernel; those that do: {CPU_OPS}")
    if device.type != "cpu" or forced_backend() == "reference":
        return False
    return op not in OPS or backend_for(op, device) == "reference"
