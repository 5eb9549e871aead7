"""TrainConfig: every setting of `python -m fastllm.train`, from defaults < a JSON/TOML file < command-line flags.

A config file holds the same keys as the flags, flat (`lr = 3e-4`); model overrides are the `ModelConfig` field names
(`n_layer = 4`, `layer_pattern = ["sliding", "sliding", "mla"]`), given flat or in a `[model]` table. On the command
line every ModelConfig field is a flag too (`--n_layer 4 --layer_pattern sliding,sliding,mla`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from dataclasses import dataclass, field

from fastllm.models import ModelConfig


@dataclass
class TrainConfig:
    # ---- data ----
    data: list[str] = field(default_factory=list)  # UTF-8 text files (globs allowed); one document per file
    seq_len: int = 256  # tokens per training sequence (the stream is packed into rows of seq_len + 1)
    val_fraction: float = 0.05  # the tail of the token stream held out for validation
    tokenizer: str | None = None  # a tokenizer.json; None: --init_from's, else GPT-2's
    train_tokenizer: bool = False  # train a BPE on `data` with train_bpe, saved as out_dir/tokenizer.json
    vocab_size: int = 4096  # size of the trained BPE (256 bytes + merges + <|endoftext|>)
    # ---- model ----
    preset: str = "gpt2"  # ModelConfig preset name, changed by `model` overrides
    model: dict = field(default_factory=dict)  # ModelConfig overrides; vocab_size defaults to the tokenizer's
    init_from: str | None = None  # fine-tune: start from any checkpoint fastllm.load reads (preset/model ignored)
    # ---- optimisation ----
    batch_size: int = 8  # sequences per micro-batch per rank; global batch = batch_size * world_size * grad_accum
    grad_accum: int = 1
    max_steps: int = 1000  # optimizer updates; the cosine schedule ends here
    lr: float = 3e-4  # peak learning rate after warmup
    min_lr: float | None = None  # end of the cosine decay; None: lr / 10
    warmup_steps: int = 100  # linear warmup from lr / warmup_steps
    weight_decay: float = 0.1  # decoupled (AdamW); never on norms, biases or embeddings
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0  # max global L2 norm of the gradients; 0 disables
    dtype: str = "float32"  # float32 | bfloat16 | float16: autocast dtype (weights and optimizer stay fp32)
    device: str = "auto"  # auto (cuda if available) | cpu | cuda | cuda:N
    seed: int = 1337  # model init and data order
    threads: int = 0  # torch CPU threads; 0: torch's default
    compile: bool = False  # torch.compile the model
    parallel: str = "ddp"  # under torchrun: ddp (replicated weights) | fsdp (FSDP2 fully_shard: weights, grads, AdamW)
    # ---- evaluation, logging, checkpoints ----
    out_dir: str = "out"
    eval_interval: int = 100  # validation loss every N steps (and at the end)
    eval_batches: int = 0  # cap on validation micro-batches; 0: the whole split
    log_interval: int = 10  # progress line and log.jsonl row every N steps
    ckpt_interval: int = 500  # out_dir/step_XXXXXXX every N steps (and at the end)
    keep_last: int = 3  # step_* checkpoints kept; older ones are deleted (best is separate)
    resume: bool = True  # continue from the latest checkpoint in out_dir if there is one
    export_dir: str | None = None  # at the end, write the best weights (fastllm.save, no optimizer) here
    export_dtype: str = "float32"  # float32 | bfloat16 for export_dir

    def __post_init__(self):
        if isinstance(self.data, str):
            self.data = [self.data]
        unknown = sorted(set(self.model) - _MODEL_FIELDS)
        if unknown:
            raise ValueError(f"TrainConfig.model: unknown ModelConfig fields {unknown}")
        checks = [
            (self.seq_len >= 1, "seq_len must be >= 1"),
            (0.0 <= self.val_fraction < 1.0, "val_fraction must be in [0, 1)"),
            (self.batch_size >= 1 and self.grad_accum >= 1, "batch_size and grad_accum must be >= 1"),
            (self.max_steps >= 1, "max_steps must be >= 1"),
            (self.lr > 0 and self.warmup_steps >= 0, "lr must be > 0 and warmup_steps >= 0"),
            (self.dtype in ("float32", "bfloat16", "float16"), f"dtype {self.dtype!r}: float32, bfloat16 or float16"),
            (self.parallel in ("ddp", "fsdp"), f"parallel {self.parallel!r}: ddp or fsdp"),
            (self.export_dtype in ("float32", "bfloat16"), f"export_dtype {self.export_dtype!r}: float32 or bfloat16"),
            (min(self.eval_interval, self.log_interval, self.ckpt_interval) >= 1, "intervals must be >= 1"),
            (self.keep_last >= 1, "keep_last must be >= 1"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(f"TrainConfig: {msg}")
        if self.min_lr is None:
            self.min_lr = self.lr / 10

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


_TRAIN_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
# ModelConfig fields settable as flat keys / flags; vocab_size is the tokenizer's (pad it in a `model` table).
_MODEL_FIELDS = {f.name for f in dataclasses.fields(ModelConfig)} - {"extra"}
_MODEL_FLAGS = _MODEL_FIELDS - set(_TRAIN_FIELDS)


def read_config_file(path: str) -> dict:
    """Flat settings from a .json or .toml file; a `model` table and flat ModelConfig keys both go to `model`."""
    if path.endswith(".toml"):
        try:
            import tomllib
        except ImportError:  # Python 3.10
            raise SystemExit(f"{path}: TOML needs Python >= 3.11; use a .json file with the same keys") from None
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    else:
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
    return split_settings(raw, where=path)


def split_settings(raw: dict, where: str = "config") -> dict:
    out, model = {}, dict(raw.get("model", {}))
    for key, value in raw.items():
        if key == "model":
            continue
        if key in _TRAIN_FIELDS:
            out[key] = value
        elif key in _MODEL_FLAGS:
            model[key] = value
        else:
            raise ValueError(f"{where}: unknown setting {key!r} (not a TrainConfig or ModelConfig field)")
    if model:
        out["model"] = model
    return out


# ---- command line --------------------------------------------------------------------------------------------------


def _parse_bool(s: str) -> bool:
    if s.lower() in ("1", "true", "yes", "on"):
        return True
    if s.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {s!r}")


def _parser_for(annotation: str):
    """(argparse type, nargs, const) for a dataclass field annotation written as a string."""
    base = annotation.replace(" | None", "")
    if base == "bool":
        return _parse_bool, "?", True  # `--flag` alone means true
    if base.startswith(("list", "tuple")):
        return (lambda s: [x for x in s.split(",") if x]), None, None
    conv = {"int": int, "float": float, "str": str, "dict": json.loads}[base]
    if base != annotation:  # optional: "none" means None
        return (lambda s: None if s.lower() == "none" else conv(s)), None, None
    return conv, None, None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m fastllm.train",
        description="Train or fine-tune a fastllm model on text files (single process, or DDP under torchrun).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--config", help="a .json or .toml file of the same keys as these flags (flags win)")
    train = p.add_argument_group("training")
    for name, f in _TRAIN_FIELDS.items():
        if name == "model":
            continue
        conv, nargs, const = _parser_for(str(f.type))
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        kw = dict(nargs=nargs, const=const) if nargs else {}
        train.add_argument(f"--{name}", type=conv, default=argparse.SUPPRESS, help=f"(default {default!r})", **kw)
    model = p.add_argument_group("model overrides (ModelConfig fields, applied to --preset)")
    for f in dataclasses.fields(ModelConfig):
        if f.name in _MODEL_FLAGS:
            conv, nargs, const = _parser_for(str(f.type).replace("tuple[str, ...]", "tuple"))
            kw = dict(nargs=nargs, const=const) if nargs else {}
            model.add_argument(f"--{f.name}", type=conv, default=argparse.SUPPRESS, **kw)
    return p


def parse_args(argv=None) -> TrainConfig:
    """TrainConfig from defaults, then --config's file, then the flags given."""
    args = vars(build_parser().parse_args(argv))
    settings = read_config_file(args.pop("config")) if args.get("config") else {}
    args.pop("config", None)
    flags = split_settings(args, where="flags")
    model = {**settings.pop("model", {}), **flags.pop("model", {})}
    cfg = TrainConfig(**{**settings, **flags, "model": model})
    cfg.data = [os.path.expanduser(d) for d in cfg.data]
    return cfg
