"""Ahead-of-time compilation of every kernel configuration a launcher can pick, for real GPUs, without a GPU.

Each kernel module lists what its launchers can launch in `aot_configs() -> list[AOTConfig]`; the AOT test compiles
each for sm_80 and sm_90a and reads the resource usage of the cubin.

    python -m fastllm.kernels.triton._aot [--json out.json] [--arch 80 90] [--modules decode ...] [--jobs N]

compiles every configuration of every module of `fastllm.kernels.triton` that defines `aot_configs` (or of the
named ones) in a process pool, and prints a Markdown table: registers per thread, shared memory bytes per block,
stack and local memory bytes per thread, and the resident blocks, warps and occupancy (warps over 64) per SM those
allow. It needs a real `triton.jit` (TRITON_INTERPRET unset or 0), no GPU.

Specialisation. The JIT compiles one variant per pattern of its arguments: pointers aligned to 16 bytes and
integers divisible by 16 get a divisibility hint (vectorised loads), integers equal to 1 become constants. Here
every pointer, and every integer parameter the kernel does not exempt with `do_not_specialize`, is compiled as
divisible by 16 and typed i32: the variant a launch with contiguous tensors and head dims that are multiples of 16
gets. Spills: ptxas puts spilled registers in the stack frame, so a Triton kernel (everything inlined, no local
arrays) spills iff cuobjdump reports STACK > 0 or LOCAL > 0.
"""

import argparse
import concurrent.futures
import importlib
import json
import multiprocessing
import os
import pkgutil
import re
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from typing import Any

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from triton.runtime.jit import JITFunction


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


@dataclass(frozen=True)
class ArchLimits:
    """Per-SM limits of one compute capability (CUDA programming guide, "Technical Specifications")."""

    shared_per_sm: int  # bytes
    shared_per_block: int  # bytes, the most one block may opt in to
    regs_per_sm: int = 65536
    threads_per_sm: int = 2048
    blocks_per_sm: int = 32
    # The CUDA runtime's own shared memory in every block (sm_80 and later). sm_90a cubins also declare 1 KiB of
    # static shared memory, which may be this same reserve: counting both errs low by at most one block per SM.
    reserved_shared_per_block: int = 1024


ARCHS = {80: ArchLimits(164 * 1024, 163 * 1024), 90: ArchLimits(228 * 1024, 227 * 1024)}


@dataclass(frozen=True)
class Resources:
    """What one compiled configuration uses on one architecture, and the occupancy it allows."""

    name: str
    arch: int
    num_warps: int
    regs: int  # registers per thread
    shared: int  # bytes per block: Triton's dynamic shared memory plus any static
    stack: int  # bytes per thread (spilled registers)
    local: int  # bytes per thread
    blocks_per_sm: int  # 0 when the block does not fit at all

    @property
    def warps_per_sm(self) -> int:
        return self.blocks_per_sm * self.num_warps

    @property
    def occupancy(self) -> float:
        """Resident warps over the SM's maximum (64 on sm_80 and sm_90)."""
        return self.warps_per_sm * 32 / ARCHS[self.arch].threads_per_sm


def blocks_per_sm(arch: int, regs: int, shared: int, num_warps: int) -> int:
    """Resident blocks per SM for a kernel of `num_warps` warps using `regs` registers per thread, `shared` bytes."""
    lim = ARCHS[arch]
    if shared > lim.shared_per_block:
        return 0
    regs_per_warp = -(-regs * 32 // 256) * 256  # registers are allocated per warp, 256 at a time
    by_regs = lim.regs_per_sm // (regs_per_warp * num_warps)
    by_threads = lim.threads_per_sm // (num_warps * 32)
    smem = -(-(shared + lim.reserved_shared_per_block) // 128) * 128  # allocated in 128-byte units
    by_shared = lim.shared_per_sm // smem
    return min(by_regs, by_threads, by_shared, lim.blocks_per_sm)


def compile_config(cfg: AOTConfig, arch: int):
    """`triton.compile` of `cfg` for sm_`arch` (sm_90a for 90) with the specialisation described in the docstring."""
    if not isinstance(cfg.fn, JITFunction):
        raise RuntimeError(
            f"{cfg.name}: the kernel is a {type(cfg.fn).__name__}, not a triton.jit function; AOT compilation needs "
            "TRITON_INTERPRET unset (or 0) when Triton is first imported"
        )
    mismatch = set(cfg.fn.arg_names) ^ set(cfg.signature)
    if mismatch:
        raise ValueError(f"{cfg.name}: signature and kernel parameters differ on {sorted(mismatch)}")
    attrs = {}
    for param in cfg.fn.params:
        ty = cfg.signature[param.name]
        if ty.startswith("*") or (ty[0] in "iu" and not param.do_not_specialize):
            attrs[(param.num,)] = [["tt.divisibility", 16]]
    src = ASTSource(cfg.fn, cfg.signature, cfg.constexprs, attrs)
    options = {"num_warps": cfg.num_warps, "num_stages": cfg.num_stages}
    return triton.compile(src, target=GPUTarget("cuda", arch, 32), options=options)


def resource_usage(cfg: AOTConfig, arch: int) -> Resources:
    """Compile `cfg` for sm_`arch` and read its registers, stack, shared and local memory with cuobjdump."""
    kernel = compile_config(cfg, arch)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "kernel.cubin")
        with open(path, "wb") as f:
            f.write(kernel.asm["cubin"])
        cuobjdump = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
        dump = subprocess.run([cuobjdump, "--dump-resource-usage", path], capture_output=True, text=True, check=True)
    match = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", dump.stdout)
    if match is None:
        raise RuntimeError(f"{cfg.name}: no resource usage in cuobjdump's output:\n{dump.stdout}")
    regs, stack, static_shared, local = map(int, match.groups())
    shared = kernel.metadata.shared + static_shared  # Triton's dynamic shared memory is not in the cubin
    return Resources(
        name=cfg.name,
        arch=arch,
        num_warps=cfg.num_warps,
        regs=regs,
        shared=shared,
        stack=stack,
        local=local,
        blocks_per_sm=blocks_per_sm(arch, regs, shared, cfg.num_warps),
    )


def kernel_modules() -> list[str]:
    """Short names ("decode", ...) of the modules of fastllm.kernels.triton that define `aot_configs`."""
    import fastllm.kernels.triton as package

    return [
        info.name
        for info in pkgutil.iter_modules(package.__path__)
        if hasattr(importlib.import_module(f"{package.__name__}.{info.name}"), "aot_configs")
    ]


def module_configs(module: str) -> list[AOTConfig]:
    return importlib.import_module(f"fastllm.kernels.triton.{module}").aot_configs()


def collect_configs(modules: list[str] | None = None) -> list[AOTConfig]:
    """Every configuration of the given kernel modules (default: all), in module order."""
    return [cfg for module in modules or kernel_modules() for cfg in module_configs(module)]


def _usage_job(module: str, index: int, arch: int) -> Resources:
    return resource_usage(module_configs(module)[index], arch)


def compile_all(archs=tuple(ARCHS), modules: list[str] | None = None, jobs: int | None = None) -> list[Resources]:
    """Resources of every configuration of `modules` (default: all) on every arch, compiled by a pool of `jobs`
    processes (default: all cores).

    Workers are spawned (a fresh interpreter, no state forked from a parent that may hold LLVM or CUDA state).
    """
    work = [
        (module, i, arch)
        for module in modules or kernel_modules()
        for i in range(len(module_configs(module)))
        for arch in archs
    ]
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(jobs or os.cpu_count(), mp_context=ctx) as pool:
        return list(pool.map(_usage_job, *zip(*work)))


def markdown_table(results: list[Resources]) -> str:
    lines = [
        "| kernel config | arch | regs | shared B | stack B | local B | blocks/SM | warps/SM | occupancy |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| `{r.name}` | sm_{r.arch}{'a' if r.arch >= 90 else ''} | {r.regs} | {r.shared} | {r.stack} | "
            f"{r.local} | {r.blocks_per_sm} | {r.warps_per_sm} | {r.occupancy:.0%} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fastllm.kernels.triton._aot", description=__doc__.split("\n")[0])
    parser.add_argument("--json", metavar="PATH", help="also write the results as a JSON list")
    parser.add_argument("--arch", type=int, nargs="+", choices=sorted(ARCHS), default=sorted(ARCHS))
    parser.add_argument("--modules", nargs="+", choices=kernel_modules(), help="kernel modules (default: all)")
    parser.add_argument("--jobs", type=int, default=None, help="compile processes (default: all cores)")
    args = parser.parse_args(argv)
    results = compile_all(tuple(args.arch), args.modules, args.jobs)
    print(markdown_table(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump([asdict(r) | {"occupancy": r.occupancy} for r in results], f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
