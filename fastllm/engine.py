"""The generation engine, gpt-fast style: `prefill`, `decode_one_token`, `decode_n_tokens`, `generate` over ids.

Text (tokenizers, stop strings, streaming pieces) lives one layer up in `fastllm.generate`; this file sees ids only.

Caches are preallocated once per call with `model.new_cache` (full K/V, sliding-window rings, MLA latents: whatever
the layers ask for). Prompts of different lengths are prefilled row by row into `cache.row(b)` (no padding, no
wasted compute), then the whole batch decodes together, each row at its own position. Rows that finish (an EOS id,
or a stop the caller reports) keep being fed the pad id and their new tokens are masked to it: no per-row host
bookkeeping on the hot path. Sampling goes through `fastllm.kernels.sample` only, with the repetition penalty over
prompt + generated tokens (Hugging Face convention: the whole history of the row, -1 past its end).

Host syncs: none per token on CUDA, except the one read of the new ids when the caller asks for them (`on_step`,
used for streaming and stop strings); without `on_step` the all-rows-done check runs every `sync_every` steps. The
sampler's error flag (NaN or +inf logits and other errors the Triton sampler records instead of raising) is read
every `sync_every` steps and when decoding ends, and raises the sampler's ValueError.
Everything the host needs (row lengths, when a row's context is full) is known on the host by construction; a
context slide (below) syncs once, when `Cache.row` checks the emptied row. (The sampler and attention ops must keep
their own side of this: the eager references validate inputs on the host, the Triton kernels are meant not to.)

Context policy (models with any full-attention or MLA layer, or learned positions): a row's context holds at most
`ctx = context_length(config, max_length)` tokens, where ctx is `max_length` if given (capped at max_seq_len for
learned absolute positions, which have no rows past it), else `config.max_seq_len`. A longer prompt is cut to its
last ctx tokens. When the next token would not fit, the row's context is cut to its last `keep` tokens (default
ctx // 2, the new token included) and re-prefilled from position 0; so a re-prefill of keep - 1 tokens happens
once every ctx - keep + 1 tokens instead of re-running the whole window every token as the seed scripts do. The
repetition penalty still sees the row's whole history. Models whose layers are all sliding-window with computed
positions never slide: their ring caches never grow, and max_length is ignored for them.
"""

from __future__ import annotations

import contextlib
import gc
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch

import fastllm.kernels as K
from fastllm.decode_step import _GuardsHeld as _GuardsHeld
from fastllm.decode_step import compiled_decode_step as compiled_decode_step
from fastllm.decode_step import decode_greedy as decode_greedy
from fastllm.decode_step import decode_one_token as decode_one_token
from fastllm.decode_step import decode_threads as decode_threads
from fastllm.decode_step import record as record


@dataclass
class SamplingParams:
    """What `fastllm.kernels.sample` applies, in its order: penalty, temperature, top-k, top-p, min-p."""

    temperature: float = 1.0  # 0: greedy
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # in (0, 1]; 1: off
    min_p: float = 0.0  # in [0, 1]; 0: off
    repetition_penalty: float = 1.0  # > 0; 1: off

    def __post_init__(self):
        if not self.temperature >= 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if isinstance(self.top_k, bool) or int(self.top_k) != self.top_k or self.top_k < 0:
            raise ValueError(f"top_k must be an integer >= 0, got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if not 0 <= self.min_p <= 1:
            raise ValueError(f"min_p must be in [0, 1], got {self.min_p}")
        if not self.repetition_penalty > 0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")
        self.top_k = int(self.top_k)


@dataclass
class GenerationStats:
    prompt_tokens: int = 0  # tokens prefilled (after cutting prompts to the context)
    new_tokens: int = 0  # tokens returned, over all rows (up to and including each row's stop)
    prefill_s: float = 0.0
    decode_s: float = 0.0  # from the end of prefill to the last token
    slides: int = 0  # context re-prefills (see the context policy)

    @property
    def decode_tokens_per_s(self) -> float:
        return self.new_tokens / self.decode_s if self.decode_s > 0 else float("nan")


def context_length(config, max_length: int | None = None) -> int | None:
    """Most tokens a row's context may hold (see the module docstring), or None when the model never needs to slide."""
    learned = config.position == "learned"
    if not learned and all(kind == "sliding" for kind in config.layer_kinds()):
        return None
    n = max_length or config.max_seq_len
    return min(n, config.max_seq_len) if learned else n


class DecodeState:
    """Per-call state: the token history (B, W) int64 with -1 past each row's end (the penalty's prev_tokens and the
    source of re-prefills), host row lengths and context starts, and the device `done` mask."""

    def __init__(
        self, rows: Sequence[torch.Tensor], max_new_tokens: int, ctx: int | None, device, eos, pad: int, width: int = 1
    ):
        # width: the history's columns in multiples of it (a compiled step that records into it keeps its shape)
        B, W = len(rows), -(-(max(r.numel() for r in rows) + max_new_tokens) // width) * width
        self.tokens = torch.full((B, W), -1, dtype=torch.int64, device=device)  # (B, W)
        for b, r in enumerate(rows):
            self.tokens[b, : r.numel()] = r
        self.prompt_lens = [r.numel() for r in rows]
        self.lengths = list(self.prompt_lens)  # host: tokens per row, known without a sync
        self.start = [0 if ctx is None else max(0, n - ctx) for n in self.lengths]  # first token of the context
        self.pos = torch.tensor(self.lengths, device=device)[:, None]  # (B, 1) where the next token goes
        self.done = torch.zeros(B, dtype=torch.bool, device=device)  # (B,)
        self.nan_flag = torch.zeros(1, dtype=torch.int32, device=device)  # the sampler's error bits (K.sample)
        self.host_done = [False] * B  # what the host has learned (on_step reads, stops)
        self.stop_step = [None] * B  # step at which the caller stopped a row
        self.eos = eos  # (E,) int64 on device, or None
        self.eos_set = set() if eos is None else set(eos.tolist())
        self.pad = pad
        self.slides = 0

    def append(self, nxt: torch.Tensor) -> torch.Tensor:
        """Masks finished rows to the pad id, records nxt (B,) in the history, updates `done`; returns masked ids."""
        return self.advance(record(nxt, self.tokens, self.pos, self.done, self.eos, self.pad))

    def advance(self, nxt: torch.Tensor) -> torch.Tensor:
        """The host's side of recording nxt (B,): every row one token longer. Returns nxt."""
        self.lengths = [n + 1 for n in self.lengths]
        return nxt


# ---- the small functions -----------------------------------------------------------------------------------------


@torch.no_grad()
def prefill(model, rows: Sequence[torch.Tensor], cache) -> torch.Tensor:
    """Logits (B, V) of each row's last token after writing rows (each (T_b,) int64, T_b >= 1) into a fresh cache.

    Rows of one length go in one forward; rows of different lengths go one by one into `cache.row(b)` (padding
    would cost compute and positions), leaving the cache ready for batched decoding at per-row positions."""
    if len({r.numel() for r in rows}) == 1:
        return model(torch.stack(rows), cache, last_only=True)[:, -1]  # (B, V)
    return torch.cat([model(r[None], cache.row(b), last_only=True)[:, -1] for b, r in enumerate(rows)])  # (B, V)


def sample_next(logits: torch.Tensor, state: DecodeState, sampling: SamplingParams, generator) -> torch.Tensor:
    """Next ids (B,) from logits (B, V) through fastllm.kernels.sample, the penalty over the row histories."""
    penalised = sampling.repetition_penalty != 1.0
    return K.sample(
        logits,
        temperature=sampling.temperature,
        top_k=sampling.top_k,
        top_p=sampling.top_p,
        min_p=sampling.min_p,
        repetition_penalty=sampling.repetition_penalty,
        prev_tokens=state.tokens if penalised else None,  # (B, W), -1 is padding to the sampler
        generator=generator,
        nan_flag=state.nan_flag,
    )


@torch.no_grad()
def slide(model, cache, state: DecodeState, b: int, keep: int) -> None:
    """Cuts row b's context to its last `keep` tokens (the newest, not yet fed, included) and re-prefills the others
    from position 0. A row the host knows is done only gets emptied: its tokens are masked anyway."""
    n = state.lengths[b]
    state.start[b] = n - keep
    state.slides += 1
    cache.seqlens[b] = 0
    if keep > 1 and not state.host_done[b]:
        model(state.tokens[b : b + 1, n - keep : n - 1], cache.row(b), last_only=True)


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Runs the block (or, as a decorator, each call) with Python's cyclic garbage collector off, then as it was.

    A decode step allocates a few hundred short-lived Python objects (the compiled step's wrappers, tuples), so the
    collector's young generation fills every few steps and its collections, the older generations' included, walk
    objects the loop never frees: 1-3% of a compiled CPU decode loop's time in profiles (GPT-2 W8A8 batch 1: 6.89
    instead of 7.07 ms per token, SWA-MLA 262M 27.5 instead of 27.8, medians alternating in one process). Reference
    counting still frees everything acyclic at once; cycles made meanwhile wait for the next collection after it."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


@torch.no_grad()
@gc_paused()
def decode_n_tokens(
    model,
    cache,
    state: DecodeState,
    logits: torch.Tensor,
    n: int,
    sampling: SamplingParams,
    *,
    generator=None,
    ctx: int | None = None,
    keep: int = 1,
    on_step: Callable[[int, list[int]], Sequence[int] | None] | None = None,
    sync_every: int = 16,
    step_fn: Callable = decode_one_token,
) -> int:
    """Samples up to n tokens per row starting from logits (B, V); returns the number of steps run.

    `on_step(step, ids)` gets each step's ids (B,) as a host list (one read per step) and returns the rows to stop
    now (e.g. a stop string completed); the loop ends early once every row is done. Raises the sampler's ValueError
    (e.g. NaN logits) at the first sync point after it was flagged. Runs with Python's cyclic garbage collector
    paused (`gc_paused`), `on_step` included."""
    steps = n
    # greedy without a penalty: a compiled CPU step samples and records in its graph (compiled_decode_step)
    plain_greedy = sampling.temperature == 0 and sampling.repetition_penalty == 1
    greedy = getattr(step_fn, "greedy", None) if plain_greedy else None
    nxt = state.append(sample_next(logits, state, sampling, generator))  # (B,)
    for i in range(n):
        synced = (i + 1) % sync_every == 0
        if synced:
            K.check_sample_flag(state.nan_flag)
        if on_step is not None:
            ids = nxt.tolist()  # the one host read per token, for the caller's streaming / stop strings
            stop = set(on_step(i, ids) or ())
            for b, t in enumerate(ids):
                if not state.host_done[b] and (t in state.eos_set or b in stop):
                    state.host_done[b] = True
                    state.stop_step[b] = i if b in stop else None
            if stop:
                state.done[sorted(stop)] = True
            if all(state.host_done):
                steps = i + 1
                break
        elif synced and state.eos is not None and bool(state.done.all()):  # without EOS ids no row ends early
            steps = i + 1
            break
        if i == n - 1:
            break  # the last token is never fed back
        if ctx is not None:
            for b in range(len(state.lengths)):
                if state.lengths[b] - 1 - state.start[b] == ctx:  # the cache is full: nxt would not fit
                    slide(model, cache, state, b, keep)
        if greedy is not None:
            nxt = state.advance(greedy(model, nxt, cache, state))
        else:
            logits = step_fn(model, nxt, cache)  # (B, V)
            nxt = state.append(sample_next(logits, state, sampling, generator))
    K.check_sample_flag(state.nan_flag)
    return steps


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # timing boundaries only, never per token


@torch.no_grad()
def generate(
    model,
    prompts: Sequence[Sequence[int] | torch.Tensor],
    max_new_tokens: int,
    *,
    sampling: SamplingParams | None = None,
    eos_ids: Sequence[int] = (),
    pad_id: int | None = None,
    generator: torch.Generator | None = None,
    on_step: Callable[[int, list[int]], Sequence[int] | None] | None = None,
    max_length: int | None = None,
    keep: int | None = None,
    compile: bool | str = False,
    sync_every: int | None = None,
) -> tuple[list[list[int]], GenerationStats]:
    """New token ids per row, and timings, for a batch of prompts of any lengths.

    Args:
        model: a fastllm Transformer (eval mode). prompts: B rows of token ids (lists or 1-D tensors), >= 1 each.
        max_new_tokens: >= 1 tokens per row at most.
        sampling: SamplingParams (default: plain sampling at temperature 1).
        eos_ids: ids that end a row; the returned row includes the one it stopped on.
        pad_id: what finished rows are fed (default: eos_ids[0], else 0).
        generator: a torch.Generator on the model's device for reproducible draws (None: the global RNG).
        on_step: `on_step(step, ids) -> rows to stop`, called with each step's ids as a host list; a row it stops
            ends with that step's token. Costs one device-to-host read per token.
        max_length, keep: the context policy (module docstring): context cap and tokens kept on a slide.
        compile: True (or a torch.compile backend name) compiles the decode step, fullgraph: CUDA graphs on CUDA,
            max-autotune with frozen weights on the CPU (`compiled_decode_step`); prefill and slides stay eager.
        sync_every: steps between all-done checks when on_step is None (default 16 on CUDA, 1 elsewhere).

    Returns (new ids per row, GenerationStats).
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if len(prompts) == 0:
        raise ValueError("no prompts given")
    sampling = sampling or SamplingParams()
    device = model.tok_emb.weight.device
    rows = [torch.as_tensor(p, dtype=torch.int64).flatten().to(device) for p in prompts]
    for b, r in enumerate(rows):
        if r.numel() == 0:
            raise ValueError(f"prompt {b} has no tokens")
    ctx = context_length(model.config, max_length)
    keep = max(1, (ctx // 2) if keep is None else min(keep, ctx)) if ctx is not None else 1
    eos = torch.tensor(sorted(set(eos_ids)), dtype=torch.int64, device=device) if eos_ids else None
    pad = pad_id if pad_id is not None else (int(eos_ids[0]) if eos_ids else 0)
    state = DecodeState(rows, max_new_tokens, ctx, device, eos, pad, width=256 if compile else 1)
    ctx_rows = [r[s:] for r, s in zip(rows, state.start)]  # (T_b,) each: the prompt cut to the context
    longest = max(r.numel() for r in ctx_rows) + max_new_tokens - 1  # most tokens a row's cache ever holds
    if compile:  # cache lengths in steps of 256: calls of similar lengths reuse the compiled step's shapes
        longest = -(-longest // 256) * 256
    cache = model.new_cache(len(rows), longest if ctx is None else min(ctx, longest), max_chunk=1)
    if device.type == "cpu":  # fastllm's kernels as C++ torch operators, eager or compiled (built once, ~10 s)
        from fastllm.kernels.cpu import native

        native.load()
    step_fn = compiled_decode_step(model, compile) if compile else decode_one_token
    stats = GenerationStats(prompt_tokens=sum(r.numel() for r in ctx_rows))

    _sync(device)
    t0 = time.perf_counter()
    logits = prefill(model, ctx_rows, cache)  # (B, V)
    _sync(device)
    t1 = time.perf_counter()
    every = sync_every or (16 if device.type == "cuda" else 1)
    with decode_threads(model, device, compile, len(rows)):
        steps = decode_n_tokens(
            model, cache, state, logits, max_new_tokens, sampling, generator=generator, ctx=ctx, keep=keep,
            on_step=on_step, sync_every=every, step_fn=step_fn,
        )  # fmt: skip
    history = state.tokens.tolist()  # the one read of the results (it waits for the device)
    stats.prefill_s, stats.decode_s = t1 - t0, time.perf_counter() - t1
    stats.slides = state.slides
    out = []
    for b, row in enumerate(history):
        new = row[state.prompt_lens[b] : state.prompt_lens[b] + steps]
        cut = next((i + 1 for i, t in enumerate(new) if t in state.eos_set), len(new))
        if state.stop_step[b] is not None:
            cut = min(cut, state.stop_step[b] + 1)
        out.append(new[:cut])
    stats.new_tokens = sum(len(r) for r in out)
    return out, stats
