"""A restricted unpickler for training checkpoints that pickle more than tensors (SWA-MLA's optimizer state holds
torchao `OptimStateFp8` tensor subclasses, which `torch.load(weights_only=True)` refuses).

Pickle runs code only through the globals it looks up (`find_class`: GLOBAL, STACK_GLOBAL, INST, OBJ and extension
codes all end there) and then calls (REDUCE, NEWOBJ, BUILD). `Unpickler.find_class` returns the real object only for
an allowlist of tensor-rebuild functions and plain containers; any other global, `os.system` included, becomes an
inert `Placeholder` subclass that records its arguments and state and runs nothing. Storages are resolved by
torch.load before find_class is consulted, so tensors load as usual. `scrub` then drops every placeholder, which
leaves the model weights (and plain values such as the config dict) and nothing the file could make executable.

This module is itself the `pickle_module` handed to `torch.load` (it provides `Unpickler` and `load`).
"""

from __future__ import annotations

import pickle
import sys

import torch

_ALLOWED = {
    ("collections", "OrderedDict"),
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_parameter"),
    ("torch._utils", "_rebuild_parameter_with_state"),
    ("torch", "Size"),
    ("torch", "device"),
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("builtins", "slice"),
    ("builtins", "complex"),
    ("builtins", "bytearray"),
}


class Placeholder:
    """Stands in for a refused global. Calling it, building it or filling it only records what the pickle asked."""

    target = "?"  # "module.name" of the refused global (set on each subclass)

    def __new__(cls, *args, **kwargs):
        obj = super().__new__(cls)
        obj.args, obj.state, obj.items = args, None, []
        return obj

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        self.state = state

    def __setitem__(self, key, value):  # SETITEMS on a refused dict subclass
        self.items.append((key, value))

    def append(self, value):  # APPENDS on a refused list subclass
        self.items.append(value)

    def extend(self, values):
        self.items.extend(values)

    def __repr__(self) -> str:
        return f"<refused {self.target}>"


_placeholders: dict[tuple[str, str], type] = {}


def _placeholder(module: str, name: str) -> type:
    key = (module, name)
    if key not in _placeholders:
        _placeholders[key] = type(f"Refused_{name}", (Placeholder,), {"target": f"{module}.{name}"})
    return _placeholders[key]


class Unpickler(pickle.Unpickler):
    """pickle.Unpickler whose `find_class` resolves only the allowlist; everything else is a Placeholder class."""

    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)  # dtypes pickle as globals (torch.float32 ...)
        return _placeholder(module, name)


def load(file, **kwargs):
    return Unpickler(file, **kwargs).load()


def _tainted(obj) -> bool:
    return isinstance(obj, Placeholder) or (
        isinstance(obj, (list, tuple, set, frozenset)) and any(_tainted(x) for x in obj)
    )


def scrub(obj):
    """obj without placeholders: dict entries holding one are dropped (nested dicts are scrubbed in turn)."""
    if isinstance(obj, dict):
        return {k: scrub(v) for k, v in obj.items() if not _tainted(v)}
    return None if _tainted(obj) else obj


def restricted_load(path: str):
    """The object in a torch.save file with every refused global replaced by a Placeholder, then scrubbed away."""
    this = sys.modules[__name__]
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False, pickle_module=this, mmap=True)
    except RuntimeError as e:
        if "mmap" not in str(e):  # legacy (non-zip) files cannot be mapped
            raise
        obj = torch.load(path, map_location="cpu", weights_only=False, pickle_module=this)
    return scrub(obj)
