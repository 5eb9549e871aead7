"""Benchmark machinery shared by benches/bench_*.py.

    pytest benches/ --benchmark                          # time every bench (pytest-benchmark, pedantic rounds)
    pytest benches/ --benchmark --benchmark-json=out.json
    pytest benches/                                      # run each timed function once: a quick equivalence check

Without --benchmark, pytest-benchmark is switched to its disabled mode, in which `benchmark.pedantic(fn, ...)` calls
`fn` exactly once and records nothing; benches still run their equivalence asserts. With it, the `bench` fixture
times through `benchmark.pedantic` and writes into `benchmark.extra_info`: the median and p20/p80 of the per-round
times, throughput derived from them, the device (CPU model, CUDA device) and versions (torch, triton, fastllm, the
peer) and the git commit. The rows also print as one table at the end of the session.

Without a CUDA device, Triton kernels can only run under Triton's interpreter: TRITON_INTERPRET=1 is set here, before
anything imports triton, so that benches may time interpreted kernels (as a proxy of their work), and
FASTLLM_KERNELS defaults to "reference" so that the Triton ops keep their eager CPU path. That also turns off
fastllm's C++ CPU kernels (fastllm._cpu), which users do get on a CPU: benches that time the CPU path users run
(bench_generate, bench_linear) unset both variables for their cases.

`python -m pytest` from the checkout's root puts the root on sys.path, where the top-level `kernels/` folder
(installed as `fastllm.kernels`) would shadow Hugging Face's `kernels` package that transformers imports: the root
comes off sys.path here, as in tests/conftest.py.
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
    os.environ.setdefault("FASTLLM_KERNELS", "reference")

REPO = Path(__file__).resolve().parents[1]
sys.path[:] = [p for p in sys.path if Path(p or os.curdir).resolve() != REPO]
SHARED = Path(os.environ.get("FASTLLM_SHARED", REPO.parent / "shared"))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # benches import helpers from each other (importlib mode)
CORPORA = SHARED / "corpora"


def pytest_addoption(parser):
    parser.addoption(
        "--benchmark",
        action="store_true",
        default=False,
        help="time the benches; without it each timed function runs once as an equivalence check",
    )


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    # Runs before pytest-benchmark's own (trylast) configure, which reads this option.
    if not config.getoption("--benchmark") and hasattr(config.option, "benchmark_disable"):
        config.option.benchmark_disable = True


# ---- environment -------------------------------------------------------------------------------------------


def version_of(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


@functools.lru_cache(maxsize=1)
def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@functools.lru_cache(maxsize=1)
def cuda_name() -> str | None:
    return torch.cuda.get_device_name() if torch.cuda.is_available() else None


@functools.lru_cache(maxsize=1)
def git_commit() -> str:
    def git(*args: str) -> str:
        out = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() if out.returncode == 0 else ""

    commit = git("rev-parse", "--short", "HEAD") or "uncommitted"
    return commit + ("-dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


def environment(peer: str | None = None) -> dict:
    """Device and versions for extra_info. `peer`: the distribution name of the library compared against."""
    env = {
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "cuda_device": cuda_name(),
        "python": platform.python_version(),
        "torch": version_of("torch"),
        "triton": version_of("triton"),
        "fastllm": version_of("fastllm"),
        "commit": git_commit(),
    }
    if peer is not None:
        env["peer"] = peer
        env["peer_version"] = version_of(peer)
    return env


def require_peer(module: str, distribution: str | None = None):
    """Import a peer library or skip with the reason."""
    return pytest.importorskip(module, reason=f"peer {distribution or module} is not installed")


def require_files(*paths: Path) -> None:
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        pytest.skip(f"shared data not found (expected ../shared beside the repo): {', '.join(missing)}")


# ---- the bench fixture ---------------------------------------------------------------------------------------


class Bench:
    """Times `fn` with `benchmark.pedantic` (or runs it once without --benchmark) and fills extra_info.

    After a timed call, `median_s`, `p20_s`, `p80_s` hold the per-round seconds; `throughput(nbytes)` adds MB/s.
    """

    def __init__(self, benchmark, timing: bool, rows: list):
        self.benchmark = benchmark
        self.timing = timing
        self.extra_info = benchmark.extra_info
        self.median_s = self.p20_s = self.p80_s = None
        self._rows = rows

    def __call__(self, fn, *args, rounds: int = 5, warmup_rounds: int = 1, iterations: int = 1, **kwargs):
        result = self.benchmark.pedantic(
            fn, args=args, kwargs=kwargs, rounds=rounds, warmup_rounds=warmup_rounds, iterations=iterations
        )
        if self.timing and self.benchmark.stats is not None:
            data = list(self.benchmark.stats.stats.data)  # seconds per iteration, one entry per round
            self.median_s = statistics.median(data)
            if len(data) > 1:
                deciles = statistics.quantiles(data, n=10, method="inclusive")
                self.p20_s, self.p80_s = deciles[1], deciles[7]
            else:
                self.p20_s = self.p80_s = data[0]
            self.extra_info.update(median_s=self.median_s, p20_s=self.p20_s, p80_s=self.p80_s, rounds=len(data))
        return result

    def info(self, peer: str | None = None, **fields) -> None:
        """Record what was measured (provider, shape, corpus, ...) together with the environment."""
        self.extra_info.update(fields)
        self.extra_info.update(environment(peer))

    def throughput(self, nbytes: int, key: str = "mb_per_s") -> float | None:
        """MB/s (1e6 bytes) from the median time, with the p20/p80 range; None when not timed."""
        self.extra_info["mb"] = round(nbytes / 1e6, 3)
        if self.median_s is None:
            return None
        mbps = nbytes / 1e6 / self.median_s
        self.extra_info[key] = round(mbps, 2)
        self.extra_info[f"{key}_p20_p80"] = [round(nbytes / 1e6 / self.p80_s, 2), round(nbytes / 1e6 / self.p20_s, 2)]
        return mbps

    def row(self, **columns) -> None:
        """A row for the summary table printed at the end of the session."""
        self._rows.append(columns)


@pytest.fixture(scope="session")
def bench_rows(request) -> list:
    rows: list = []
    request.config._fastllm_bench_rows = rows
    return rows


@pytest.fixture
def bench(benchmark, request, bench_rows) -> Bench:
    return Bench(benchmark, request.config.getoption("--benchmark"), bench_rows)


def pytest_terminal_summary(terminalreporter, config):
    rows = getattr(config, "_fastllm_bench_rows", None)
    if not rows:
        return
    columns = list(dict.fromkeys(k for row in rows for k in row))
    table = [columns] + [["" if row.get(c) is None else str(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(columns))]
    terminalreporter.section("fastllm bench summary")
    for k, r in enumerate(table):
        terminalreporter.write_line("  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip())
        if k == 0:
            terminalreporter.write_line("  ".join("-" * w for w in widths))
