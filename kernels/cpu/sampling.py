"""Launcher of the C++ greedy step (csrc/cpu/sampling.h): the first argmax per row of fp32 / bf16 CPU logits, with
the sampler's error bits. torch's argmax costs ~180 us on GPT-2's 50257 logits on one core, this ~10."""

import torch

from fastllm import _cpu
from fastllm.kernels.cpu.linear import DTYPE_CODES, X_DTYPES


def supports(logits: torch.Tensor) -> bool:
    """fp32 or bf16 (B, V) CPU logits with V >= 1 and a contiguous last dimension."""
    cpu = logits.is_cpu and logits.dtype in X_DTYPES
    return cpu and logits.dim() == 2 and logits.shape[1] > 0 and logits.stride(1) == 1


def greedy(logits: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(ids (B,) int64, flags): ids[b] = logits[b].argmax() (the first index on ties; a row's first NaN if it holds
    one, as torch.argmax), flags the OR of `fastllm.kernels.reference.sampling`'s FLAG_NAN, FLAG_POSINF and
    FLAG_NEG_INF_ROW over the rows."""
    if not supports(logits):
        raise ValueError(
            f"fastllm.kernels.cpu: greedy needs float32 or bfloat16 (B, V >= 1) CPU logits with a contiguous last "
            f"dimension, got {tuple(logits.shape)} {logits.dtype} on {logits.device}"
        )
    B, V = logits.shape
    ids = torch.empty(B, dtype=torch.int64)
    if not B:
        return ids, 0
    return ids, _cpu.greedy(logits.data_ptr(), DTYPE_CODES[logits.dtype], B, V, logits.stride(0), ids.data_ptr())
