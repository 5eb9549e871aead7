"""The decode step the engine loops over: `decode_one_token`, and on the CPU / CUDA its compiled form
(`compiled_decode_step`, with `decode_greedy`, which also samples and records greedy ids inside the graph), the
guard skipping of repeated compiled calls (`_GuardsHeld`) and the thread setting of a decode loop (`decode_threads`).
`fastllm.engine` re-exports them."""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

import fastllm.kernels as K

if TYPE_CHECKING:
    from fastllm.engine import DecodeState


def record(nxt, tokens, pos, done, eos, pad: int) -> torch.Tensor:
    """The device side of `DecodeState.append` (also traced into the compiled greedy step): finished rows' ids masked
    to pad, then written at pos into tokens (B, W); pos advanced, `done` updated with the EOS ids. Returns the ids."""
    nxt = torch.where(done, torch.full_like(nxt, pad), nxt)  # (B,)
    if eos is not None:
        done |= torch.isin(nxt, eos)
    tokens.scatter_(1, pos, nxt[:, None])
    pos += 1
    return nxt


@torch.no_grad()
def decode_one_token(model, cur: torch.Tensor, cache) -> torch.Tensor:
    """Logits (B, V) after appending cur (B,) to every row of the cache (the hot step; `compile` wraps this one)."""
    return model(cur[:, None], cache)[:, -1]  # (B, V)


@torch.no_grad()
def decode_greedy(model, cur: torch.Tensor, cache, tokens, pos, done, nan_flag, eos, pad: int) -> torch.Tensor:
    """`decode_one_token`, its greedy ids and their `record`ing into the history in one function: compiled, the
    sampling and bookkeeping of a step run inside its graph (C++ on the CPU) instead of ~10 Python-dispatched ops
    (0.25-0.35 ms a GPT-2 step on the CPU, where the weights streamed since the previous step have evicted the
    interpreter's state). Returns the recorded ids (B,)."""
    logits = model(cur[:, None], cache)[:, -1]  # (B, V)
    return record(K.sample(logits, temperature=0, nan_flag=nan_flag), tokens, pos, done, eos, pad)


def compiled_decode_step(model, compile: bool | str = True) -> Callable:
    """`decode_one_token` under torch.compile(fullgraph=True), kept on the model for later calls.

    compile=True: on CUDA, inductor with CUDA graphs ("reduce-overhead"). On the CPU, inductor with max-autotune and
    freezing: the weights become constants, packed for inductor's C++ / oneDNN GEMMs, or, where every linear is bf16
    (with biases: steps of one row; `layers.packs_when_frozen`), into fastllm's tiles for its C++ kernel;
    compiling takes ~20-60 s the first time (inductor caches it on disk). On the CPU the graph calls fastllm's
    kernels as C++ torch operators (`fastllm.kernels.cpu.native`, built on first use, ~10 s). Frozen weights are baked
    in: when a parameter changes (in place or replaced), the next call compiles again, after
    `torch._dynamo.reset()` (which drops every compiled graph in the process). A call that repeats the previous one
    (same cache object and inputs, guards held) skips dynamo's guard evaluation (`_GuardsHeld`): between calls on
    one cache, change it only as the engine does (its contents, not its tensors or settings).
    A string names another torch.compile backend ("aot_eager", ...), used with its defaults.
    On the CPU with frozen weights the step also has `step.greedy(model, cur, cache, state)`: `decode_greedy` compiled
    the same way, which `decode_n_tokens` calls for greedy sampling without a penalty.
    """
    device = model.tok_emb.weight.device
    frozen = compile is True and device.type == "cpu"
    native = False
    if device.type == "cpu":
        from fastllm.kernels.cpu import native as native_ops

        native = native_ops.load()  # the C++ torch operators: no Python between the compiled graph and the kernels
    weights = tuple((id(p), p._version) for p in model.parameters()) if frozen else None
    key = (compile, device.type, next(model.parameters()).dtype, native)
    cached = model.__dict__.get("_fastllm_decode_step")
    if cached is not None and cached[0] == key and cached[1] == weights:
        return cached[2]
    if not frozen:
        backend = compile if isinstance(compile, str) else "inductor"
        mode = "reduce-overhead" if device.type == "cuda" and backend == "inductor" else None
        step = torch.compile(decode_one_token, backend=backend, mode=mode, fullgraph=True)
    else:
        if cached is not None and cached[1] is not None:
            torch._dynamo.reset()  # the graphs compiled before hold the old weights as constants
        compiled = torch.compile(model, fullgraph=True, mode="max-autotune")
        from fastllm.models.layers import packing_linears, packs_when_frozen

        # bf16 (biases: one row): the linears run fastllm's kernel on packed tiles; by the row count of the call
        pack = {rows: packs_when_frozen(model, rows) for rows in (1, None)}
        # Read when (re)compiling, so set around every call (inductor's options= of torch.compile would not freeze):
        # frozen weights; a C++ wrapper (the graph's own code without Python, ~0.3 ms a GPT-2 step) where every
        # fastllm op in the graph is a C++ operator; the autotuner's report off stderr. Every model (and cache shape)
        # compiled adds an entry to Transformer.forward's cache: past dynamo's default limit of 8 it would silently
        # run eager, hence the higher limit. The patches are made once (~20 us each to make).
        inductor = torch._inductor.config.patch(freezing=True, cpp_wrapper=native, autotune_num_choices_displayed=0)
        dynamo = torch._dynamo.config.patch(recompile_limit=64)

        held, held_greedy = _GuardsHeld(), _GuardsHeld()
        greedy = torch.compile(decode_greedy, fullgraph=True, mode="max-autotune")

        def step(model_, cur: torch.Tensor, cache) -> torch.Tensor:
            with inductor, dynamo, packing_linears(pack[1 if cur.shape[0] == 1 else None]), held(model_, cur, cache):
                return compiled(cur[:, None], cache)[:, -1]  # (B, V)

        def greedy_step(model_, cur: torch.Tensor, cache, state: DecodeState) -> torch.Tensor:
            eos = state.eos
            seen = (state.tokens.shape, state.pad, None if eos is None else (eos.shape, eos.dtype))
            packing = packing_linears(pack[1 if cur.shape[0] == 1 else None])
            with inductor, dynamo, packing, held_greedy(model_, cur, cache, seen):
                return greedy(model_, cur, cache, state.tokens, state.pos, state.done, state.nan_flag, eos, state.pad)

        step.greedy = greedy_step

    model.__dict__["_fastllm_decode_step"] = (key, weights, step)
    return step


class _GuardsHeld:
    """Skips dynamo's guard evaluation on the calls of a compiled CPU step that repeat a call whose guards held.

    Before each call of a compiled function dynamo checks its guards, a check per parameter, buffer and cache tensor
    and the Python values the graph read: ~0.45 ms of a ~5 ms GPT-2 int8 step (profiled). Within one decode loop the
    inputs do not change in any way a guard sees: the same cache object (same tensors, same `fresh`, `max_chunk` and
    ring settings), `cur` of one shape and dtype, the same model mode and grad mode; weight changes are caught by
    `compiled_decode_step`, which recompiles. So a call runs under dynamo's `skip_guard_eval_unsafe` stance when the
    previous call had the same cache (the object itself) and these inputs and compiled no graph (its guards held);
    any other call evaluates the guards as usual."""

    def __init__(self):
        self.cache = None  # weakref to the cache of the last call whose guards held
        self.inputs = None

    @contextlib.contextmanager
    def __call__(self, model, cur: torch.Tensor, cache, extra: tuple = ()):
        """extra: what else the compiled function's guards see of its other inputs (shapes, Python values)."""
        from torch._dynamo.utils import counters

        inputs = (cur.shape, cur.dtype, cache.fresh, model.training, torch.is_grad_enabled(), extra)
        if self.cache is not None and self.cache() is cache and self.inputs == inputs:
            with torch.compiler.set_stance(skip_guard_eval_unsafe=True):
                yield
            return
        graphs = counters["stats"]["unique_graphs"]
        yield
        held = counters["stats"]["unique_graphs"] == graphs
        self.cache, self.inputs = (weakref.ref(cache) if held else None), inputs


def decode_threads(model, device: torch.device, compile, rows: int | None = None) -> contextlib.AbstractContextManager:
    """The thread setting of a decode loop of `rows` rows. On the CPU, where the step's linear layers run fastllm's
    C++ kernels (eager steps; int8 layers also when compiled; layers compiled with frozen weights that
    `packs_when_frozen` at that row count), torch's pool at one thread and the kernels on the others
    (`fastllm.kernels.cpu.decode_threads`); otherwise (other compiled float steps: inductor's GEMMs use torch's
    pool; CUDA) unchanged."""
    from fastllm.models.layers import packs_when_frozen
    from fastllm.quant import is_quantized

    packed = compile is True and packs_when_frozen(model, rows)
    if device.type != "cpu" or (compile and not is_quantized(model) and not packed):
        return contextlib.nullcontext()
    from fastllm.kernels import cpu

    return cpu.decode_threads()
