"""Checkpoint formats: `load` detects the format of a file or directory and maps it onto fastllm's one layout.

Pipeline of `load(path_or_dir, config=None, device=None, dtype=None)`:
  1. resolve the weights file (a directory is searched for the usual names, see `resolve`);
  2. read it (`torch.load(weights_only=True, mmap=True)` or safetensors), unwrap a training-checkpoint dict
     (`model_state_dict`, `state_dict`, `model`, `module`), strip `_orig_mod.` / `module.` prefixes; a file that
     pickles other objects is re-read with the restricted unpickler (`unpickle.py`, refused globals become inert
     placeholders and are dropped), and only a Format with `pickled_extras=True` may then accept it;
  3. ask each registered Format, in order, whether it `detect`s the Source; the first match `convert`s it into
     (ModelConfig, state_dict in fastllm names), inferring dims from tensor shapes and taking the rest from the
     config stored beside or inside the file, or from `config` (a dict in the upstream's own key names);
  4. build the Transformer on the meta device, check every tensor against it (missing / unexpected / shape, each
     error naming the file and key), assign the weights, cast to dtype and move to device;
  5. load the family's tokenizer with the Format's `tokenizer(source)` (None, with a warning, when absent).

Adding a family: write `checkpoints/<family>.py` with `detect(source) -> bool`, `convert(source) ->
(ModelConfig, dict)` (use `base.Mapper`: `take(key, shape)` pops an upstream tensor checking its shape, `put`
stores it under a fastllm name, `finish()` rejects leftovers; `Source.need(settings, key, ...)` asks for a config
key the file lacks) and `tokenizer(source)`, then `register_format(Format("<family>", detect, convert, tokenizer))`
at the bottom of this file (`before=` puts a more specific detector ahead of a looser one).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch

from fastllm.checkpoints import gpt124m, hf_gpt2, inl, l1, llm_scratch, native, swa_mla, unpickle
from fastllm.checkpoints.base import (
    CheckpointError,
    PickledObjectsError,
    Source,
    read_json,
    read_weights,
    strip_prefixes,
    unwrap,
)
from fastllm.checkpoints.native import save as save
from fastllm.models import ModelConfig, Transformer


@dataclass(frozen=True)
class Format:
    name: str
    detect: Callable[[Source], bool]
    convert: Callable[[Source], tuple[ModelConfig, dict[str, torch.Tensor]]]
    tokenizer: Callable[[Source], object | None]
    pickled_extras: bool = False  # its files may pickle non-tensor objects: accept a restricted-unpickler read


FORMATS: list[Format] = []

# Weights files a directory is searched for, in order: HF / fastllm, L1 (its generator prefers the latest training
# checkpoint over pytorch_model.bin), HF .bin, INL, Raschka, generic names.
WEIGHT_FILES = (
    "model.safetensors",
    "latest_checkpoint.pt",
    "pytorch_model.bin",
    "pytorch_model.pt",
    "best_checkpoint.pt",
    "model.pth",
    "model.pt",
)


def register_format(fmt: Format, *, before: str | None = None) -> None:
    """Adds a format to the detection order (at the end, or just before the format named `before`)."""
    names = [f.name for f in FORMATS]
    if fmt.name in names:
        FORMATS.pop(names.index(fmt.name))
        names.remove(fmt.name)
    FORMATS.insert(names.index(before) if before in names else len(FORMATS), fmt)


def resolve(path_or_dir: str | os.PathLike) -> str:
    """The weights file of a path: the file itself, or the first WEIGHT_FILES name (or the only weights file) in a
    directory."""
    path = os.fspath(path_or_dir)
    if os.path.isfile(path):
        return path
    if not os.path.isdir(path):
        raise CheckpointError(f"{path}: no such file or directory")
    for name in WEIGHT_FILES:
        if os.path.isfile(os.path.join(path, name)):
            return os.path.join(path, name)
    found = sorted(f for f in os.listdir(path) if f.endswith((".safetensors", ".bin", ".pt", ".pth")))
    if len(found) == 1:
        return os.path.join(path, found[0])
    raise CheckpointError(
        f"{path}: cannot tell which weights file to load: expected one of {', '.join(WEIGHT_FILES)} or a single "
        f"weights file, found {found or 'none'}; pass the file itself"
    )


def read_source(path_or_dir, config: dict | None = None, *, weights_only: bool = True) -> Source:
    path = resolve(path_or_dir)
    refused = None
    try:
        obj = read_weights(path, weights_only=weights_only)
    except PickledObjectsError as e:
        refused = str(e)  # raised again by `load` unless the detected format expects pickled extras
        try:
            obj = unpickle.restricted_load(path)
        except Exception:
            raise e from None
    tensors, container = unwrap(obj, path)
    side = read_json(os.path.join(os.path.dirname(os.path.abspath(path)), "config.json")) or {}
    if config is not None and not isinstance(config, dict):
        raise TypeError(f"config must be a dict in the upstream project's key names, got {type(config).__name__}")
    return Source(path, strip_prefixes(tensors), container, side, dict(config or {}), refused)


def detect(source: Source) -> Format:
    for fmt in FORMATS:
        if fmt.detect(source):
            return fmt
    keys = sorted(source.tensors)[:6]
    raise CheckpointError(
        f"{source.path}: unknown checkpoint format: no supported family ({', '.join(f.name for f in FORMATS)}) "
        f"matches tensors like {keys}"
    )


def build(config: ModelConfig, tensors: dict[str, torch.Tensor], path: str, *, device=None, dtype=None):
    """A Transformer holding `tensors` (fastllm names), every key and shape checked against the model."""
    with torch.device("meta"):
        model = Transformer(config)
    expected = model.state_dict()
    if config.tie_embeddings:
        expected.pop("lm_head.weight")
    for key, ref in expected.items():
        if key not in tensors:
            raise CheckpointError(f"{path}: missing tensor for {key!r} (shape {tuple(ref.shape)}) after conversion")
        if tensors[key].shape != ref.shape:
            raise CheckpointError(
                f"{path}: tensor for {key!r} has shape {tuple(tensors[key].shape)}, expected {tuple(ref.shape)}"
            )
    extra = sorted(set(tensors) - set(expected))
    if extra:
        raise CheckpointError(f"{path}: unexpected tensors {extra[:5]} for this model configuration")
    dtype = dtype or tensors["tok_emb.weight"].dtype
    tensors = {k: t.to(device=device, dtype=dtype if t.is_floating_point() else t.dtype) for k, t in tensors.items()}
    model.load_state_dict(tensors, strict=False, assign=True)
    model.tie_weights()
    return model.eval()


def load(path_or_dir, *, config: dict | None = None, device=None, dtype=None, weights_only: bool = True, quantize=None):
    """(model, tokenizer) from any supported checkpoint: HF GPT-2, GPT-124M, L1, llm-scratch v1/v2, SWA-MLA, INL,
    fastllm.

    Args:
        path_or_dir: a weights file or a directory holding one (with config.json / tokenizer files beside it).
        config: settings the file does not record, in the upstream project's own key names (e.g. {"n_heads": 12}
            for a raw GPT-124M state_dict); a needed key that is missing raises an error naming it.
        device, dtype: where and in which float dtype to put the weights (default: CPU, the stored dtype).
        weights_only: torch.load's safety switch; False unpickles arbitrary objects (trusted files only). With
            True, formats whose files pickle other objects (SWA-MLA optimizer state) load through the restricted
            unpickler, which never calls anything outside its allowlist and keeps only weights and plain values.
        quantize: None, "int8" (int8 weight-only linear layers) or "w8a8" (int8 weights and activations), for CPU
            decoding (`fastllm.quant.quantize`).
    """
    if quantize not in (None, "int8", "w8a8"):
        raise ValueError(f"quantize must be None, 'int8' or 'w8a8', got {quantize!r}")
    source = read_source(path_or_dir, config, weights_only=weights_only)
    try:
        fmt = detect(source)
    except CheckpointError:
        if source.refused:  # the refusal says more than "unknown format" about a file that pickles objects
            raise PickledObjectsError(source.refused) from None
        raise
    if source.refused and not fmt.pickled_extras:
        raise PickledObjectsError(source.refused)
    model_config, tensors = fmt.convert(source)
    model = build(model_config, tensors, source.path, device=device, dtype=dtype)
    if quantize is not None:
        from fastllm.quant import quantize as quantize_model

        quantize_model(model.eval(), quantize)
    tokenizer = fmt.tokenizer(source)
    if tokenizer is None:
        warnings.warn(f"{source.path}: no tokenizer found for this {fmt.name} checkpoint; returning None", stacklevel=2)
    return model, tokenizer


register_format(Format("fastllm", native.detect, native.convert, native.tokenizer))
register_format(Format("hf-gpt2", hf_gpt2.detect, hf_gpt2.convert, hf_gpt2.tokenizer))
register_format(Format("gpt-124m", gpt124m.detect, gpt124m.convert, gpt124m.tokenizer))
register_format(Format("l1", l1.detect, l1.convert, l1.tokenizer))
register_format(Format("llm-scratch", llm_scratch.detect, llm_scratch.convert, llm_scratch.tokenizer))
register_format(Format("swa-mla", swa_mla.detect, swa_mla.convert, swa_mla.tokenizer, pickled_extras=True))
register_format(Format("inl", inl.detect, inl.convert, inl.tokenizer))

__all__ = ["FORMATS", "CheckpointError", "Format", "Source", "build", "detect", "load", "register_format", "save"]
