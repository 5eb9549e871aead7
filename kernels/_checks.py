"""Argument checks shared by the public wrappers of fastllm.kernels and its launchers."""

import torch


def _require(cond: bool, msg: str) -> None:
    if not cond:
        raise ValueError(msg)


def _last_dim_contiguous(x: torch.Tensor) -> torch.Tensor:
    return x if x.stride(-1) == 1 or x.shape[-1] == 1 else x.contiguous()  # unit stride, or one element
