"""Chat mode of `python -m fastllm.generate`: prompt formats per family, history, context trimming, commands.

Formats (`config.extra["chat_format"]`, else "plain"), from the seed projects (SEEDS.md):
- "plain":      "{system}\\n\\nUser: {msg}\\nAssistant: {reply}\\n" ... ending "User: {msg}\\nAssistant:"; stops at
                "\\nUser:".
- "transcript": the SWA-MLA inference script: the same with "You:" for the user; stops at "\\nYou:".
- "chatml":     "<|im_start|>{role}\\n{content}<|im_end|>\\n" per message, then "<|im_start|>assistant\\n"; stops on
                <|im_end|> (the SWA-MLA instruct fine-tune).
- "inl":        INL-LLM's template: "<SYSTEM> {s}", "<USER> {msg}", "<ASSISTANT> {reply}" joined by "\\n", then
                "\\n<ASSISTANT>" (the template defines no generation suffix); stops on <USER> / <SYSTEM>.

A prompt is a list of parts: plain text (encoded with special-token text as text, so a user cannot inject control
tokens) and special tokens (encoded as their ids when the tokenizer has them, else as text).
History that no longer fits the context (the engine's context length, less max_new_tokens, and never less than
half of it) loses its oldest turns first; the system prompt stays.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable
from dataclasses import dataclass

from fastllm.text import encode, eos_ids_of


@dataclass(frozen=True)
class Special:
    name: str


@dataclass(frozen=True)
class ChatFormat:
    system: Callable[[str], list]  # the system prompt's parts
    turn: Callable[[str, str], list]  # a past (user, reply) turn
    ask: Callable[[str], list]  # the new message, ending where the reply starts
    stops: tuple[str, ...] = ()  # stop strings
    stop_tokens: tuple[str, ...] = ()  # special tokens that end the reply (when the tokenizer has them)


def _speaker(user: str) -> ChatFormat:
    return ChatFormat(
        system=lambda s: [f"{s}\n\n"],
        turn=lambda u, a: [f"{user}: {u}\nAssistant: {a}\n"],
        ask=lambda u: [f"{user}: {u}\nAssistant:"],
        stops=(f"\n{user}:",),
    )


def _chatml_msg(role: str, content: str) -> list:
    return [Special("<|im_start|>"), f"{role}\n{content}", Special("<|im_end|>"), "\n"]


FORMATS: dict[str, ChatFormat] = {
    "plain": _speaker("User"),
    "transcript": _speaker("You"),
    "chatml": ChatFormat(
        system=lambda s: _chatml_msg("system", s),
        turn=lambda u, a: _chatml_msg("user", u) + _chatml_msg("assistant", a),
        ask=lambda u: _chatml_msg("user", u) + [Special("<|im_start|>"), "assistant\n"],
        stops=("<|im_end|>",),
        stop_tokens=("<|im_end|>",),
    ),
    "inl": ChatFormat(
        system=lambda s: [Special("<SYSTEM>"), f" {s}\n"],
        turn=lambda u, a: [Special("<USER>"), f" {u}\n", Special("<ASSISTANT>"), f" {a}\n"],
        ask=lambda u: [Special("<USER>"), f" {u}\n", Special("<ASSISTANT>")],
        stops=("<USER>", "<SYSTEM>"),
        stop_tokens=("<USER>", "<SYSTEM>"),
    ),
}

HELP = """commands:
  /quit, /exit   leave
  /clear         forget the conversation (the system prompt stays)
  /temp X        sampling temperature (0 = greedy)
  /topk N        keep the N most likely tokens (0 = off)
  /topp X        nucleus sampling mass in (0, 1] (1 = off)
  /help          this list"""


def encode_parts(tokenizer, parts: list) -> list[int]:
    ids: list[int] = []
    for part in parts:
        if isinstance(part, Special):
            i = tokenizer.token_to_id(part.name)
            if i is not None:
                ids.append(i)
                continue
            part = part.name  # not in this vocabulary: plain text
        ids += encode(tokenizer, part, specials=False, bos=not ids)  # <bos> once, at the start
    return ids


def build_prompt(tokenizer, fmt: ChatFormat, system: str | None, history: list, message: str, budget: int | None):
    """(ids, number of oldest turns dropped) for the conversation plus the new message, within budget tokens."""
    head = fmt.system(system) if system else []
    for dropped in range(len(history) + 1):
        parts = head + [p for u, a in history[dropped:] for p in fmt.turn(u, a)] + fmt.ask(message)
        ids = encode_parts(tokenizer, parts)
        if budget is None or len(ids) <= budget:
            break
    return ids, dropped


def set_param(sampling, command: str, value: str):
    """A copy of sampling with /temp, /topk or /topp applied; ValueError with a message on a bad value."""
    field, kind = {"/temp": ("temperature", float), "/topk": ("top_k", int), "/topp": ("top_p", float)}[command]
    try:
        v = kind(value)
    except ValueError:
        raise ValueError(f"{command} needs {'an integer' if kind is int else 'a number'}, got {value!r}") from None
    return dataclasses.replace(sampling, **{field: v})  # SamplingParams re-validates


def chat(
    model,
    tokenizer,
    *,
    sampling,
    max_new_tokens: int,
    seed: int | None = None,
    max_length: int | None = None,
    system_prompt: str | None = None,
    chat_format: str | None = None,
    out=None,
    read: Callable[[str], str] = input,
    echo: bool = False,
    compile: bool = False,
) -> int:
    """Reads messages with `read` until /quit or end of input, streaming each reply to `out`; returns 0. `echo`
    repeats each input line (piped input is not echoed by a terminal, and the transcript should still read right)."""
    import torch

    from fastllm.engine import context_length
    from fastllm.generate import generate_rows

    out = out or sys.stdout
    name = chat_format or model.config.extra.get("chat_format") or "plain"
    if name not in FORMATS:
        raise ValueError(f"unknown chat_format {name!r}; known: {sorted(FORMATS)}")
    fmt = FORMATS[name]
    ctx = context_length(model.config, max_length)
    budget = None if ctx is None else max(ctx - max_new_tokens, ctx // 2)
    eos = eos_ids_of(tokenizer, extra_tokens=fmt.stop_tokens)
    device = model.tok_emb.weight.device
    generator = torch.Generator(device=device)
    if seed is not None:
        generator.manual_seed(seed)
    else:
        generator.seed()  # a fresh session each run; --seed replays one
    history: list[tuple[str, str]] = []
    print(f"fastllm chat ({name} format, {device.type}). /help lists the commands; /quit or Ctrl-D leaves.", file=out)
    while True:
        try:
            line = read("You: ")
        except (EOFError, KeyboardInterrupt):
            print(file=out)
            return 0
        message = line.strip()
        if echo:
            print(line, file=out)
        if not message:
            continue
        if message.startswith("/"):
            command, _, value = message.partition(" ")
            if command in ("/quit", "/exit"):
                return 0
            if command == "/clear":
                history.clear()
                print("(conversation cleared)", file=out)
            elif command == "/help":
                print(HELP, file=out)
            elif command in ("/temp", "/topk", "/topp"):
                try:
                    sampling = set_param(sampling, command, value.strip())
                except ValueError as e:
                    print(f"(error: {e})", file=out)
                else:
                    s = sampling
                    print(f"(temperature={s.temperature:g} top_k={s.top_k} top_p={s.top_p:g})", file=out)
            else:
                print(f"(unknown command {command}; /help lists the commands)", file=out)
            continue
        ids, dropped = build_prompt(tokenizer, fmt, system_prompt, history, message, budget)
        if dropped:
            print(f"(context full: dropped the {dropped} oldest turn(s))", file=out)
        print("Assistant:", end="", file=out, flush=True)

        def show(_row: int, piece: str) -> None:
            out.write(piece)
            out.flush()

        try:
            texts, _, _ = generate_rows(
                model, tokenizer, [ids], max_new_tokens, sampling=sampling, stops=fmt.stops, eos=eos, stream=show,
                generator=generator, max_length=max_length, compile=compile,
            )  # fmt: skip
        except KeyboardInterrupt:  # Ctrl-C stops this reply, not the session; the turn is not kept
            print(" (interrupted)", file=out, flush=True)
            continue
        print(file=out, flush=True)
        history.append((message, texts[0].strip()))
