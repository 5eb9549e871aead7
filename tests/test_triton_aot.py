"""Every Triton kernel configuration a launcher can pick compiles for sm_80 and sm_90a, without spills, and fits.

Each kernel module compiles in its own `python -m fastllm.kernels.triton._aot --modules <module>` subprocess: this
process imports Triton under TRITON_INTERPRET=1 (tests/conftest.py), where `triton.jit` makes interpreter functions
that cannot be compiled. The subprocess compiles in a pool of os.cpu_count() processes, into a fresh Triton cache.
Spills show as STACK (ptxas keeps spilled registers in the stack frame), not LOCAL, so both must be 0.
"""

import json
import os
import subprocess
import sys

import pytest

from fastllm.kernels.triton import _aot


@pytest.mark.parametrize("module", _aot.kernel_modules())
def test_every_config_compiles_without_spills_and_fits(module, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path / "triton-cache")
    out = tmp_path / "aot.json"
    cmd = [sys.executable, "-m", "fastllm.kernels.triton._aot", "--modules", module, "--json", str(out)]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-4000:]
    assert "| kernel config | arch |" in run.stdout  # the Markdown table the bench report embeds
    results = json.loads(out.read_text())

    # the configs are listed by the subprocess: here `aot_configs` may need a real triton.jit function
    names = [r["name"] for r in results if r["arch"] == 80]
    assert names and len(set(names)) == len(names), f"{module}: config names must be unique"
    assert sorted((r["name"], r["arch"]) for r in results) == sorted((n, a) for n in names for a in _aot.ARCHS)
    problems = [
        f"{r['name']} on sm_{r['arch']}: {r['regs']} regs, {r['stack']} B stack, {r['local']} B local, "
        f"{r['shared']} B shared, {r['blocks_per_sm']} blocks/SM"
        for r in results
        if r["stack"] or r["local"] or r["shared"] > _aot.ARCHS[r["arch"]].shared_per_block or r["blocks_per_sm"] < 1
    ]
    assert not problems, f"{module}: {len(problems)} configs spill or do not fit:\n" + "\n".join(problems)


@pytest.mark.parametrize(
    "arch,regs,shared,num_warps,blocks",
    [
        (80, 32, 0, 4, 16),  # threads: 2048 / 128
        (80, 255, 0, 4, 2),  # registers: 255 round up to 8192 per warp, 65536 / (8192 * 4)
        (80, 168, 0, 4, 3),  # 168 * 32 = 5376 per warp (a multiple of 256): 65536 / (5376 * 4)
        (80, 64, 40960, 4, 4),  # shared: 164 KiB / (40 KiB + the 1 KiB the runtime reserves)
        (90, 64, 40960, 4, 5),  # 228 KiB / 41 KiB
        (80, 16, 0, 1, 32),  # the 32-block cap
        (80, 64, 170000, 4, 0),  # over sm_80's 163 KiB per block
        (90, 64, 170000, 4, 1),
    ],
)
def test_occupancy_arithmetic(arch, regs, shared, num_warps, blocks):
    assert _aot.blocks_per_sm(arch, regs, shared, num_warps) == blocks
