"""fastllm's own format: `model.safetensors` (fastllm names; a tied head stored once) + `config.json` (the
ModelConfig fields with "model_type": "fastllm") + optionally the tokenizer as `tokenizer.json`."""

from __future__ import annotations

import json
import os

from fastllm.checkpoints.base import CheckpointError, Source
from fastllm.checkpoints.tokenizers import load_tokenizer_file
from fastllm.models import ModelConfig

MODEL_TYPE = "fastllm"


def _gpt2_tokenizer():
    from fastllm.tokenizer import Tokenizer

    return Tokenizer.gpt2()


# Tokenizer of a saved model without tokenizer.json, by ModelConfig.family (families whose vocabulary is GPT-2's).
DEFAULT_TOKENIZERS = {"gpt2": _gpt2_tokenizer, "gpt-124m": _gpt2_tokenizer}


def detect(source: Source) -> bool:
    return source.side_config.get("model_type") == MODEL_TYPE


def convert(source: Source):
    fields = {k: v for k, v in source.side_config.items() if k not in ("model_type", "fastllm_version")}
    try:
        config = ModelConfig.from_dict(fields)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{os.path.join(source.dir, 'config.json')}: invalid fastllm config ({e})") from None
    return config, dict(source.tensors)


def tokenizer(source: Source):
    path = os.path.join(source.dir, "tokenizer.json")
    if os.path.isfile(path):
        return load_tokenizer_file(path)
    make = DEFAULT_TOKENIZERS.get(source.side_config.get("family"))
    return make() if make else None


def save(model, directory: str | os.PathLike, *, tokenizer=None) -> None:
    """Writes `model.safetensors` + `config.json` (and `tokenizer.json` if given) that `fastllm.load` reads back."""
    from safetensors.torch import save_file

    from fastllm import __version__

    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    tensors = {k: t.detach().to("cpu").contiguous() for k, t in model.state_dict().items()}
    if model.config.tie_embeddings:
        tensors.pop("lm_head.weight", None)  # safetensors refuses shared storage; load re-ties
    save_file(tensors, os.path.join(directory, "model.safetensors"), metadata={"format": "pt"})
    config = {"model_type": MODEL_TYPE, "fastllm_version": __version__, **model.config.to_dict()}
    with open(os.path.join(directory, "config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2)
    if tokenizer is not None:
        tokenizer.save(os.path.join(directory, "tokenizer.json"))
