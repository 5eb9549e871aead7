"""Ahead-of-time compilation of every kernel configuration a launcher can pick, for real GPUs, without a GPU.

Each kernel module lists what its launchers can launch in `aot_configs() -> list[AOTConfig]`; the AOT test compiles
each for sm_80 and sm_90a and reads the resource usage of the cubin.
"""

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class AOTConfig:
    """One launchable specialisation of a `@triton.jit` kernel.

    `signature` maps every kernel parameter name to its Triton type string ("*fp32", "*bf16", "i32", "i64", "fp32",
    or "constexpr"); `constexprs` gives the value of each constexpr parameter.
    """

    name: str  # readable id, e.g. "swa_fwd[bf16,BM=64,BN=64,D=128]"
    fn: Any  # the triton.jit function
    signature: dict[str, str]
    constexprs: dict[str, Any] = field(default_factory=dict)
    num_warps: int = 4
    num_stages: int = 2
