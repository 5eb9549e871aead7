"""Text generation: `fastllm.generate(...)` and the CLI `python -m fastllm.generate` (batch and chat modes).

    >>> model, tok = fastllm.load("path/to/checkpoint")
    >>> fastllm.generate(model, tok, ["Once upon a time"], 50, temperature=0.8, top_p=0.9, seed=0)
    [', there lived ...']

The token-level loop is `fastllm.engine`; this file turns text into ids and back: prompts are encoded (special-token
text allowed: the caller owns its prompt), each row's new tokens go through a `fastllm.text.TextStream` (complete
UTF-8 only, stop strings cut, their possible starts held back), so a streaming callback receives exactly the text
that is returned. The CLI (`main`, `parse_args`, `cli`) is below; chat mode lives in `fastllm.chat`.

This module is callable (its class is swapped below) because `fastllm.generate` names both the function and the
module that `python -m fastllm.generate` runs: depending on import order the package attribute is one or the other,
and both must generate. `importlib.import_module("fastllm.generate")` always gives the module.
torch is imported inside functions so that bad CLI flags are reported before torch loads.
"""

from __future__ import annotations

import argparse
import os
import sys
import types
import warnings
from collections.abc import Callable, Sequence

from fastllm.chat import FORMATS as chat_formats
from fastllm.chat import chat
from fastllm.text import TextStream, encode, eos_ids_of


def generate_rows(
    model,
    tokenizer,
    rows: list[list[int]],
    max_new_tokens: int,
    *,
    sampling=None,
    stops: Sequence[str] = (),
    eos: Sequence[int] = (),
    stream: Callable | None = None,
    generator=None,
    max_length: int | None = None,
    compile: bool = False,
):
    """(texts or None, new ids per row, GenerationStats) for prompts already encoded; texts need a tokenizer.

    Rows end on an id in `eos` (not part of the text) or a stop string (cut from the text, its ids kept)."""
    from fastllm import engine

    texts = [TextStream(tokenizer, stops) for _ in rows] if tokenizer is not None else None
    finished = [False] * len(rows)

    def emit(b: int, piece) -> None:
        if stream is not None and piece != "":
            stream(b, piece)

    def on_step(step: int, ids: list[int]) -> list[int]:
        stopped = []
        for b, t in enumerate(ids):
            if finished[b]:
                continue
            if t in eos:
                finished[b] = True
                if texts is not None:
                    emit(b, texts[b].flush())
            elif texts is None:
                emit(b, t)  # no tokenizer: the stream gets ids
            else:
                emit(b, texts[b].push(t))
                if texts[b].stopped:
                    finished[b] = True
                    stopped.append(b)
        return stopped

    # per-token reads (one sync each) only for streaming and stop strings; else EOS is tracked on the device and the
    # text is decoded once at the end, through the same TextStream
    watch = stream is not None or bool(stops)
    new, stats = engine.generate(
        model, rows, max_new_tokens, sampling=sampling, eos_ids=list(eos), generator=generator,
        on_step=on_step if watch else None, max_length=max_length, compile=compile,
    )  # fmt: skip
    if texts is not None and not watch:
        for b, ids in enumerate(new):
            for t in ids[:-1] if ids and ids[-1] in eos else ids:
                texts[b].push(t)
    for b in range(len(rows)):
        if not finished[b] and texts is not None:
            emit(b, texts[b].flush())
    return (None if texts is None else [t.text for t in texts]), new, stats


def generate_with_stats(
    model,
    tokenizer,
    prompts,
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    min_p: float = 0.0,
    repetition_penalty: float = 1.0,
    seed: int | None = None,
    stream: Callable | None = None,
    stop: str | Sequence[str] | None = None,
    max_length: int | None = None,
    eos_id: int | Sequence[int] | None = None,
    compile: bool = False,
):
    """`generate` that also returns the engine's GenerationStats."""
    import torch

    from fastllm import engine

    sampling = engine.SamplingParams(temperature, top_k, top_p, min_p, repetition_penalty)
    stops = [stop] if isinstance(stop, str) else list(stop or ())
    as_tensor = isinstance(prompts, torch.Tensor)
    if as_tensor:
        if prompts.dim() != 2 or prompts.is_floating_point():
            raise ValueError(f"prompts must be a LongTensor (B, T) or a list of str, got {tuple(prompts.shape)}")
        rows = prompts.tolist()
    else:
        if isinstance(prompts, str) or tokenizer is None:
            raise ValueError("prompts must be a list of str (with a tokenizer) or a LongTensor (B, T) of ids")
        rows = [encode(tokenizer, p) for p in prompts]
        start = getattr(tokenizer, "eot_token", None)
        for i, r in enumerate(rows):
            if not r:  # like GPT-2's unconditional samples: start from <|endoftext|> where there is one
                if start is None:
                    raise ValueError(f"prompt {i} is empty and the tokenizer has no end-of-text token to start from")
                r.append(start)
    if stops and tokenizer is None:
        raise ValueError("stop strings need a tokenizer")
    eos = eos_ids_of(tokenizer, eos_id)
    generator = None
    if seed is not None:
        generator = torch.Generator(device=model.tok_emb.weight.device).manual_seed(seed)
    need_text = not as_tensor or stream is not None or bool(stops)
    texts, new, stats = generate_rows(
        model, tokenizer if need_text else None, rows, max_new_tokens, sampling=sampling, stops=stops, eos=eos,
        stream=stream, generator=generator, max_length=max_length, compile=compile,
    )  # fmt: skip
    if not as_tensor:
        return texts, stats
    T, width = prompts.shape[1], max(len(r) for r in new)
    pad = eos[0] if eos else -1  # rows that ended early keep padding with EOS (-1: no EOS id is known)
    out = torch.full((len(rows), T + width), pad, dtype=torch.int64, device=prompts.device)
    out[:, :T] = prompts
    for b, r in enumerate(new):
        out[b, T : T + len(r)] = torch.tensor(r, dtype=torch.int64)
    return out, stats


def generate(
    model,
    tokenizer,
    prompts,
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    min_p: float = 0.0,
    repetition_penalty: float = 1.0,
    seed: int | None = None,
    stream: Callable | None = None,
    stop: str | Sequence[str] | None = None,
    max_length: int | None = None,
    eos_id: int | Sequence[int] | None = None,
):
    """Generates up to max_new_tokens tokens after each prompt, batched, with the model's preallocated caches.

    Args:
        model: a fastllm Transformer (`fastllm.load`). tokenizer: its tokenizer; may be None for id prompts.
        prompts: list[str] -> list[str] of completions (the new text only); or a LongTensor (B, T) of ids ->
            LongTensor (B, T + n): the prompts followed by the new ids, a row that ended early (EOS, stop string)
            padded with the EOS id.
        temperature (0 = greedy), top_k (0 = off), top_p in (0, 1], min_p, repetition_penalty (HF convention, over
            prompt + generated tokens): see `fastllm.kernels.sample`, through which every token is drawn.
        seed: makes the draws reproducible (a torch.Generator on the model's device).
        stream: `stream(row, piece)` called as text is decoded: complete UTF-8 only, never text past a stop string;
            the pieces of a row join to exactly its returned completion. Without a tokenizer it gets ids.
        stop: strings that end a row; the text returned stops before the first one.
        max_length: context cap; a full-attention model slides its context past it (see `fastllm.engine`).
        eos_id: ids that end a row (default: the tokenizer's end-of-text token).
    """
    return generate_with_stats(
        model, tokenizer, prompts, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
        repetition_penalty=repetition_penalty, seed=seed, stream=stream, stop=stop, max_length=max_length,
        eos_id=eos_id,
    )[0]  # fmt: skip


# ---- CLI: python -m fastllm.generate -------------------------------------------------------------------------

DEFAULT_CHECKPOINT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets", "default")
DTYPES = ("float32", "float16", "bfloat16")


class CLIError(Exception):
    """A user error: printed as one line, exit code 2."""


def check_flags(max_new_tokens, temperature, top_k, top_p, min_p, repetition_penalty, max_length) -> None:
    # the engine's SamplingParams checks the same; repeated here so that bad flags fail before torch loads
    for ok, msg in (
        (max_new_tokens >= 1, f"--max_new_tokens must be >= 1, got {max_new_tokens}"),
        (temperature >= 0, f"--temperature must be >= 0, got {temperature}"),
        (top_k >= 0, f"--top_k must be >= 0, got {top_k}"),
        (0 < top_p <= 1, f"--top_p must be in (0, 1], got {top_p}"),
        (0 <= min_p <= 1, f"--min_p must be in [0, 1], got {min_p}"),
        (repetition_penalty > 0, f"--repetition_penalty must be > 0, got {repetition_penalty}"),
        (max_length is None or max_length >= 2, f"--max_length must be >= 2, got {max_length}"),
    ):
        if not ok:
            raise CLIError(msg)


def read_prompts(prompt: list[str] | None, prompts_file: str | None) -> list[str]:
    prompts = list(prompt or [])
    if prompts_file is not None:
        try:
            with open(prompts_file, encoding="utf-8") as f:
                prompts += [line.rstrip("\r\n") for line in f if line.strip()]  # one prompt per non-blank line
        except OSError as e:
            raise CLIError(f"--prompts_file {prompts_file}: {e.strerror or e}") from None
    if not prompts:
        raise CLIError("no prompt: give --prompt TEXT or --prompts_file PATH (or --mode chat)")
    for i, p in enumerate(prompts):
        if not p.strip():
            raise CLIError(f"prompt {i + 1} is empty")
    return prompts


def load_model(checkpoint: str | None, device: str | None, dtype: str | None, quantize: str | None = None):
    """(model, tokenizer, torch.device) with clear errors for a missing file, a bad format or a missing device."""
    import torch

    import fastllm
    from fastllm.checkpoints import CheckpointError

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise CLIError(f"--device {device}: {e}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise CLIError(f"--device {device}: CUDA is not available here (torch {torch.__version__}); use --device cpu")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise CLIError(f"--device {device}: MPS is not available here; use --device cpu")
    dt = getattr(torch, dtype) if dtype else (torch.bfloat16 if dev.type == "cuda" else torch.float32)
    if checkpoint is None:
        if not os.path.isdir(DEFAULT_CHECKPOINT):
            raise CLIError(
                f"no --checkpoint given and the bundled default model ({DEFAULT_CHECKPOINT}) is not installed; "
                "pass --checkpoint PATH"
            )
        checkpoint = DEFAULT_CHECKPOINT
    if not os.path.exists(checkpoint):
        raise CLIError(f"--checkpoint {checkpoint}: no such file or directory")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a missing tokenizer is reported below, as one line
        try:
            model, tokenizer = fastllm.load(checkpoint, device=dev, dtype=dt, quantize=quantize)
        except (CheckpointError, ValueError, OSError, TypeError) as e:
            raise CLIError(f"--checkpoint {checkpoint}: {e}") from None
    if tokenizer is None:
        raise CLIError(f"--checkpoint {checkpoint}: no tokenizer found beside the weights (tokenizer.json)")
    return model, tokenizer, dev


def peak_memory(dev) -> str:
    import torch

    if dev.type == "cuda":
        return f"{torch.cuda.max_memory_allocated(dev) / 2**20:.1f} MiB (CUDA max allocated)"
    try:
        import resource
    except ImportError:  # Windows
        return "n/a"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return f"{rss / (2**20 if sys.platform == 'darwin' else 2**10):.1f} MiB (peak RSS)"


def main(
    checkpoint: str | None = None,
    mode: str | None = None,
    prompt: list[str] | None = None,
    prompts_file: str | None = None,
    max_new_tokens: int = 256,
    temperature: float = 0.8,
    top_k: int = 50,
    top_p: float = 0.9,
    min_p: float = 0.0,
    repetition_penalty: float = 1.1,
    seed: int | None = None,
    device: str | None = None,
    dtype: str | None = None,
    max_length: int | None = None,
    system_prompt: str | None = None,
    stream: bool = False,
    compile: bool = False,
    chat_format: str | None = None,
    quantize: str | None = None,
) -> int:
    """Batch mode: complete each prompt, print it and a metrics line. Chat mode: a streamed conversation.
    Defaults follow the SWA-MLA seed's inference script; mode defaults to batch when prompts are given, else chat."""
    mode = mode or ("batch" if prompt or prompts_file else "chat")
    check_flags(max_new_tokens, temperature, top_k, top_p, min_p, repetition_penalty, max_length)
    prompts = read_prompts(prompt, prompts_file) if mode == "batch" else []
    model, tokenizer, dev = load_model(checkpoint, device, dtype, quantize)
    sampling = dict(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p)
    if mode == "chat":
        from fastllm.engine import SamplingParams

        params = SamplingParams(repetition_penalty=repetition_penalty, **sampling)
        chat_format = chat_format or model.config.extra.get("chat_format") or "plain"
        if chat_format not in chat_formats:
            raise CLIError(f"the checkpoint's chat_format {chat_format!r} is unknown; pass --chat_format")
        tty = sys.stdin.isatty()
        if tty:
            import readline  # noqa: F401  (line editing and history for input())
        return chat(
            model, tokenizer, sampling=params, max_new_tokens=max_new_tokens, seed=seed, max_length=max_length,
            system_prompt=system_prompt, chat_format=chat_format, echo=not tty, compile=compile,
        )  # fmt: skip
    if system_prompt:
        prompts = [f"{system_prompt}\n\n{p}" for p in prompts]
    kw = dict(sampling, repetition_penalty=repetition_penalty, max_length=max_length, compile=compile)
    generate_with_stats(model, tokenizer, [prompts[0][:64]], 2, seed=0, **kw)  # warm-up: first-call costs untimed

    def show(_row: int, piece: str) -> None:
        sys.stdout.write(piece)
        sys.stdout.flush()

    # streamed prompts run one after another (a batch would interleave rows); otherwise all in one batch
    groups = [[p] for p in prompts] if stream else [prompts]
    stats = []
    for i, group in enumerate(groups):
        if stream:
            print(f">>> {group[0]}", flush=True)
        texts, st = generate_with_stats(
            model, tokenizer, group, max_new_tokens, seed=None if seed is None else seed + i,
            stream=show if stream else None, **kw,
        )  # fmt: skip
        stats.append(st)
        for p, text in zip(group, texts):
            print("\n" if stream else f">>> {p}\n{text}\n", flush=True)  # streamed text is already out
    prefill_ms = 1e3 * sum(s.prefill_s for s in stats)
    new, decode_s = sum(s.new_tokens for s in stats), sum(s.decode_s for s in stats)
    print(
        f"[metrics] prompts={len(prompts)} prompt_tokens={sum(s.prompt_tokens for s in stats)} "
        f"prefill={prefill_ms:.1f} ms decode={new} tokens in {decode_s:.2f} s ({new / max(decode_s, 1e-9):.1f} tok/s) "
        f"peak_memory={peak_memory(dev)} device={dev} dtype={str(model.tok_emb.weight.dtype).removeprefix('torch.')}",
        flush=True,
    )
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m fastllm.generate",
        description="Generate text with a fastllm model: batch mode (completions and a metrics line) or a chat.",
    )
    p.add_argument("--checkpoint", help="file or directory in any format fastllm.load reads (default: bundled model)")
    p.add_argument("--mode", choices=("batch", "chat"), help="default: batch with prompts, else chat")
    p.add_argument("--prompt", action="append", help="a prompt (repeatable)")
    p.add_argument("--prompts_file", help="a text file, one prompt per line")
    p.add_argument("--max_new_tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    p.add_argument("--top_k", type=int, default=50, help="0 = off")
    p.add_argument("--top_p", type=float, default=0.9, help="in (0, 1]; 1 = off")
    p.add_argument("--min_p", type=float, default=0.0)
    p.add_argument("--repetition_penalty", type=float, default=1.1, help="1 = off (HF convention, prompt included)")
    p.add_argument("--seed", type=int, help="reproducible sampling")
    p.add_argument("--device", help="cpu, cuda, cuda:1, mps (default: cuda when available)")
    p.add_argument("--dtype", choices=DTYPES, help="default: bfloat16 on CUDA, float32 elsewhere")
    p.add_argument("--max_length", type=int, help="context length; full-attention models slide past it")
    p.add_argument("--system_prompt", help="chat: the system message; batch: a paragraph before each prompt")
    p.add_argument("--stream", action="store_true", help="batch: print text as it decodes (chat always streams)")
    p.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the decode step: CUDA graphs on CUDA; on the CPU, frozen weights in inductor's C++ GEMMs "
        "(about a minute to compile, then 2-3x faster decode of 100M+ models)",
    )
    p.add_argument("--chat_format", choices=sorted(chat_formats), help="default: the checkpoint's, else plain")
    p.add_argument(
        "--quantize",
        choices=("int8", "w8a8"),
        help="int8: weight-only int8 linear layers (per-row scales), decoded by fastllm's C++ CPU kernel; a quarter "
        "of the fp32 weight bytes per token. w8a8: the activations quantized per row too, integer dot products "
        "(AVX-512 VNNI): faster at batch > 1, a little less accurate",
    )
    return p.parse_args(argv)


def cli(argv: list[str] | None = None) -> int:
    """Entry point: parses flags, runs `main`, turns user errors into one line on stderr and exit code 2."""
    for f in (sys.stdout, sys.stderr):
        if hasattr(f, "reconfigure"):
            f.reconfigure(errors="replace")  # a terminal that cannot show a character gets '?', not a crash
    args = parse_args(argv)
    try:
        return main(**vars(args))
    except CLIError as e:
        print(f"python -m fastllm.generate: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130


class _CallableModule(types.ModuleType):
    def __call__(self, *args, **kwargs):
        return generate(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule

if __name__ == "__main__":
    # run the importable copy (fastllm.generate), so the CLI and its helpers share one module
    from fastllm.generate import cli as _cli

    sys.exit(_cli())
