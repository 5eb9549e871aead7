"""Data parallelism for the trainer under torchrun: DDP or FSDP2 (`--parallel ddp|fsdp`).

- ddp: every rank holds the whole model; gradients are all-reduced (averaged) after the last micro-batch.
- fsdp: `torch.distributed.fsdp.fully_shard` on every block, then on the model (embeddings, final norm, head).
  Parameters, gradients and the AdamW moments are DTensors sharded over the ranks; a block's weights are
  all-gathered for its forward and backward, and its gradients reduce-scattered (averaged) after the last
  micro-batch. Memory per rank for weights + optimizer is about 1 / world of the model's.

Both give every rank the mean gradient of the global batch, so W processes with batch B train like one process with
batch W B, up to the order of floating-point sums. Checkpoints always hold the single-process layout: under FSDP2
all ranks gather full tensors (`torch.distributed.checkpoint.state_dict` with full_state_dict and cpu_offload) and
rank 0 writes them, so a checkpoint loads with `fastllm.load` and resumes in one process, under DDP or under FSDP2
with any world size.
"""

from __future__ import annotations

import contextlib

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.fsdp import FSDPModule, fully_shard
from torch.distributed.tensor import DTensor

MODES = ("ddp", "fsdp")


def parallelize(model: nn.Module, mode: str, world: int, device: torch.device) -> nn.Module:
    """The module to train with: `model` itself in one process, a DDP wrapper, or `model` sharded in place (fsdp)."""
    if world == 1:
        return model
    if mode == "ddp":
        return nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    for block in model.layers:
        fully_shard(block)
    fully_shard(model)
    return model


def is_sharded(model: nn.Module) -> bool:
    return isinstance(model, FSDPModule)


def gradient_sync(net: nn.Module, sync: bool):
    """Context for one micro-batch's forward: with sync=False its backward only accumulates local gradients (grad
    accumulation); the last micro-batch syncs. FSDP2 reads its flag during the backward, so it is set here."""
    if is_sharded(net):
        net.set_requires_gradient_sync(sync)
        return contextlib.nullcontext()
    if sync or not isinstance(net, nn.parallel.DistributedDataParallel):
        return contextlib.nullcontext()
    return net.no_sync()


def clip_grad_norm(model: nn.Module, max_norm: float) -> torch.Tensor:
    """nn.utils.clip_grad_norm_ over all parameters; returns the global norm as a plain tensor (also when sharded)."""
    norm = nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    return norm.full_tensor() if isinstance(norm, DTensor) else norm


def checkpoint_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[nn.Module | None, dict | None]:
    """(model, optimizer state dict) to write in a checkpoint, in the single-process layout.

    Unsharded: the model itself and `optimizer.state_dict()`. Sharded: every rank must call this (it all-gathers);
    rank 0 gets a plain CPU copy of the model and the optimizer state keyed by parameter index like a single-process
    AdamW, the other ranks get (None, None).
    """
    if not is_sharded(model):
        return model, optimizer.state_dict()
    full = StateDictOptions(full_state_dict=True, cpu_offload=True)
    weights = get_model_state_dict(model, options=full)
    optim = get_optimizer_state_dict(model, optimizer, options=full)
    if dist.get_rank() != 0:
        return None, None
    from fastllm.models import Transformer

    with torch.device("meta"):
        plain = Transformer(model.config)
    plain.load_state_dict(weights, assign=True)
    plain.tie_weights()
    names = [name for group in optim["param_groups"] for name in group["params"]]
    index = {name: i for i, name in enumerate(names)}
    return plain, {
        "state": {index[name]: s for name, s in optim["state"].items()},
        "param_groups": [{**g, "params": [index[n] for n in g["params"]]} for g in optim["param_groups"]],
    }


def load_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Loads a single-process optimizer state dict (keyed by parameter index), also into a sharded model's optimizer
    (every rank passes the full state; each keeps its shards)."""
    if not is_sharded(model):
        optimizer.load_state_dict(state)
        return
    name_of = {id(p): name for name, p in model.named_parameters()}
    names = [name_of[id(p)] for group in optimizer.param_groups for p in group["params"]]
    keyed = {
        "state": {names[i]: s for i, s in state["state"].items()},
        "param_groups": [{**g, "params": [names[i] for i in g["params"]]} for g in state["param_groups"]],
    }
    set_optimizer_state_dict(model, optimizer, keyed, options=StateDictOptions(full_state_dict=True))
