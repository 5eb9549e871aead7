"""What every checkpoint format shares: reading files, unwrapping containers, prefix stripping, the `Source` a format
converts, the `Mapper` that moves upstream tensors onto fastllm names, and errors that name file, key and
expectation."""

from __future__ import annotations

import fnmatch
import json
import os
import re
from dataclasses import dataclass, field

import torch

WRAPPER_KEYS = ("model_state_dict", "state_dict", "model", "module")  # where training checkpoints keep the weights
STRIP_PREFIXES = ("_orig_mod.", "module.")  # torch.compile and DDP wrappers, in any order and number
_MISSING = object()


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded; the message names the file, the key and what was expected."""


class PickledObjectsError(CheckpointError):
    """weights_only=True refused a pickled object (formats that expect such extras retry with `unpickle`)."""


def read_json(path: str) -> dict | None:
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable JSON file ({e})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def read_weights(path: str, *, weights_only: bool = True):
    """The object stored in a weights file: a safetensors dict, or whatever torch.save wrote (a state_dict or a
    training-checkpoint dict). `weights_only=True` refuses pickled classes (no code runs while loading)."""
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no such file")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        try:
            return load_file(path)
        except Exception as e:  # safetensors raises its own SafetensorError for truncated or corrupt headers
            raise CheckpointError(f"{path}: cannot read the safetensors file, truncated or corrupt? ({e})") from None
    try:
        try:  # mmap: weights stay on disk until touched (a 1B fp32 model is 4 GB)
            return torch.load(path, map_location="cpu", weights_only=weights_only, mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e):  # legacy (non-zip) torch.save files cannot be mapped
                raise
            return torch.load(path, map_location="cpu", weights_only=weights_only)
    except Exception as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if weights_only and ("Weights only load failed" in str(e) or "Unsupported global" in str(e)):
            raise PickledObjectsError(
                f"{path}: the checkpoint pickles objects other than tensors ({msg}); fastllm loads with "
                f"weights_only=True by default; pass weights_only=False only for a file you trust"
            ) from None
        raise CheckpointError(f"{path}: cannot read the checkpoint, truncated or not a torch file? ({msg})") from None


def _is_state_dict(obj) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def unwrap(obj, path: str) -> tuple[dict[str, torch.Tensor], dict]:
    """(state_dict, container extras) from a raw state_dict or a dict wrapping one under a WRAPPER_KEYS key."""
    if _is_state_dict(obj):
        return dict(obj), {}
    if isinstance(obj, dict):
        for key in WRAPPER_KEYS:
            if _is_state_dict(obj.get(key)):
                return dict(obj[key]), {k: v for k, v in obj.items() if k != key}
    kind = f"a dict with keys {sorted(map(str, obj))[:8]}" if isinstance(obj, dict) else type(obj).__name__
    raise CheckpointError(
        f"{path}: no state_dict found: expected a dict of tensors or a dict with one under "
        f"{', '.join(repr(k) for k in WRAPPER_KEYS)}; got {kind}"
    )


def strip_prefixes(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, t in tensors.items():
        while key.startswith(STRIP_PREFIXES):
            key = key.split(".", 1)[1]
        out[key] = t
    return out


@dataclass
class Source:
    """A checkpoint as read from disk, before any format-specific interpretation."""

    path: str  # the weights file
    tensors: dict[str, torch.Tensor]  # prefix-stripped state_dict
    container: dict = field(default_factory=dict)  # the wrapper dict's other entries (config, cfg, step, ...)
    side_config: dict = field(default_factory=dict)  # config.json beside the weights file, {} if none
    user_config: dict = field(default_factory=dict)  # load(..., config=...): upstream key names
    refused: str | None = None  # weights_only's refusal when the restricted unpickler read the file instead

    @property
    def dir(self) -> str:
        return os.path.dirname(os.path.abspath(self.path))

    def find_file(self, name: str, levels: int = 2) -> str | None:
        """`name` in the weights file's folder or up to `levels` folders above it."""
        d = self.dir
        for _ in range(levels + 1):
            if os.path.isfile(os.path.join(d, name)):
                return os.path.join(d, name)
            d = os.path.dirname(d)
        return None

    def need(self, settings: dict, key: str, family: str, why: str):
        """settings[key], or an error telling the user to pass it in `config`."""
        if settings.get(key) is not None:
            return settings[key]
        raise CheckpointError(
            f"{self.path}: this {family} checkpoint does not record {key!r} ({why}); pass it as "
            f"fastllm.load(..., config={{{key!r}: ...}})"
        )


def has_key(source: Source, pattern: str) -> bool:
    """Whether any tensor key fully matches the regex (detectors must not depend on one layer being present)."""
    rx = re.compile(pattern)
    return any(rx.fullmatch(k) for k in source.tensors)


def count_layers(tensors: dict, pattern: str, path: str) -> int:
    """Layers indexed by the first group of `pattern` (a regex over keys); checks they run 0..L-1."""
    idx = {int(m.group(1)) for k in tensors if (m := re.match(pattern, k))}
    if not idx:
        raise CheckpointError(f"{path}: no layer tensors matching {pattern!r}")
    n = max(idx) + 1
    gaps = sorted(set(range(n)) - idx)
    if gaps:
        raise CheckpointError(f"{path}: layers {gaps} are missing (found layer indices up to {n - 1})")
    return n


class Mapper:
    """Moves upstream tensors onto fastllm names. Every upstream tensor must be taken or ignored: a leftover is an
    error (it means a layout variant this loader does not understand)."""

    def __init__(self, source: Source, family: str, ignore: tuple[str, ...] = ()):
        self.path, self.family = source.path, family
        self.left = {k: t for k, t in source.tensors.items() if not any(fnmatch.fnmatchcase(k, p) for p in ignore)}
        self.out: dict[str, torch.Tensor] = {}

    def has(self, key: str) -> bool:
        return key in self.left

    def take(self, key: str, shape: tuple | None = None) -> torch.Tensor:
        if key not in self.left:
            want = f" of shape {tuple(shape)}" if shape is not None else ""
            raise CheckpointError(f"{self.path}: missing tensor {key!r}{want} ({self.family} layout)")
        t = self.left.pop(key)
        if shape is not None and tuple(t.shape) != tuple(shape):
            raise CheckpointError(
                f"{self.path}: tensor {key!r} has shape {tuple(t.shape)}, expected {tuple(shape)} ({self.family} "
                f"layout, dims inferred from the other tensors and the config)"
            )
        return t

    def take_table(self, key: str, cols: int) -> torch.Tensor:
        """A (rows, cols) table whose row count is itself inferred (embeddings, position tables)."""
        t = self.take(key)
        if t.dim() != 2 or t.shape[1] != cols:
            raise CheckpointError(
                f"{self.path}: tensor {key!r} has shape {tuple(t.shape)}, expected (*, {cols}) ({self.family} layout)"
            )
        return t

    def take_opt(self, key: str, shape: tuple | None = None) -> torch.Tensor | None:
        return self.take(key, shape) if key in self.left else None

    def put(self, name: str, t: torch.Tensor | None) -> None:
        if t is not None:
            self.out[name] = t

    def finish(self) -> dict[str, torch.Tensor]:
        if self.left:
            keys = sorted(self.left)
            more = f" and {len(keys) - 5} more" if len(keys) > 5 else ""
            raise CheckpointError(
                f"{self.path}: unexpected tensors {keys[:5]}{more}: not part of the {self.family} layout this "
                f"loader knows"
            )
        return self.out


def tied_head(head: torch.Tensor | None, emb: torch.Tensor) -> bool:
    """A stored head equal to the embedding (or none stored) is tied: keep one tensor."""
    return head is None or (head.shape == emb.shape and torch.equal(head, emb))
