"""Turn `pytest benches/ --benchmark --benchmark-json=out.json` into one Markdown table and one PNG plot per family.

    python -m fastllm.bench_report out.json [more.json ...] [--out benches/report] [--aot aot.json]

A family is a bench file (`benches/bench_tokenizer.py` -> "tokenizer") unless a bench sets `extra_info["family"]`.
Each family gets `<family>.md` (the machine and versions once, then one row per measurement: what was measured,
the provider, the median with its p20-p80 range and every derived metric the bench recorded, such as MB/s,
GFLOP/s or tokens/s and speedups) and `<family>.png` (one panel per bench function: providers side by side for
each case, on the bench's headline metric). `index.md` links them; the README embeds these files, so numbers are
regenerated from a run, never edited by hand.

`--aot` takes the JSON of `python -m fastllm.kernels.triton._aot --json aot.json` (every Triton kernel configuration
compiled for sm_80 and sm_90a) and adds `kernels.md`: registers per thread, shared memory, spills and the occupancy
they allow, per configuration and architecture.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

# extra_info keys that describe the machine, not the measurement: shown once per family.
ENV_KEYS = ("cpu", "cpu_count", "cuda_device", "python", "torch", "triton", "fastllm", "commit")
# per-row keys the table does not repeat (timing internals, peer versions, the env)
HIDDEN_KEYS = {*ENV_KEYS, "median_s", "p20_s", "p80_s", "rounds", "peer", "peer_version", "family"}
# headline metrics, best first: the first one a bench recorded is plotted; higher is better unless listed in LOWER
METRICS = (
    "tflops",
    "gflops",
    "gb_per_s",
    "tok_per_s",
    "mb_per_s",
    "us_per_token",
    "ms_per_token",
    "ms_per_mb",
    "first_load_ms",
)
LOWER_IS_BETTER = {"us_per_token", "ms_per_token", "ms_per_mb", "first_load_ms"}


@dataclass
class Row:
    family: str
    bench: str  # the test function, e.g. "test_encode"
    case: str  # the measurement's own fields (shape, corpus, ...) without the provider
    provider: str
    median_s: float
    p20_s: float
    p80_s: float
    fields: dict = field(default_factory=dict)  # the derived metrics and descriptive fields
    env: dict = field(default_factory=dict)


def _family(fullname: str, extra: dict) -> str:
    if extra.get("family"):
        return str(extra["family"])
    m = re.search(r"bench_(\w+)\.py", fullname)
    return m.group(1) if m else "misc"


def load_rows(paths: list[Path]) -> list[Row]:
    rows = []
    for path in paths:
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise SystemExit(f"bench_report: cannot read {path}: {e}") from None
        if not isinstance(data, dict) or not isinstance(data.get("benchmarks"), list):
            raise SystemExit(f"bench_report: {path} is not pytest-benchmark JSON (no 'benchmarks' list)")
        for b in data["benchmarks"]:
            extra, stats = dict(b.get("extra_info") or {}), b.get("stats") or {}
            median = extra.get("median_s", stats.get("median"))
            if median is None:
                continue
            bench = b.get("name", "?").split("[")[0]
            provider = str(extra.get("provider", "-"))
            case_fields = {k: v for k, v in extra.items() if k not in HIDDEN_KEYS and k != "provider"}
            descriptive = {k: v for k, v in case_fields.items() if not _is_metric(k)}
            case = ", ".join(_field(k, v) for k, v in descriptive.items() if v is not None) or b.get("param") or "-"
            rows.append(
                Row(
                    family=_family(b.get("fullname", ""), extra),
                    bench=bench,
                    case=case,
                    provider=provider,
                    median_s=float(median),
                    p20_s=float(extra.get("p20_s", stats.get("min", median))),
                    p80_s=float(extra.get("p80_s", stats.get("max", median))),
                    fields={k: v for k, v in case_fields.items() if _is_metric(k)},
                    env={k: extra[k] for k in ENV_KEYS if k in extra},
                )
            )
    return rows


def _field(key: str, value) -> str:
    return str(value) if key in ("shape", "case") else f"{key}={value}"  # a shape string names its own fields


_METRIC_PARTS = ("_per_", "speedup", "fraction", "ratio", "match", "gflop", "tflop", "bound")


def _is_metric(key: str) -> bool:
    """A measured quantity (a column of the table) rather than part of what was measured (the case)."""
    return (
        key in METRICS
        or any(part in key for part in _METRIC_PARTS)
        or key.endswith(("_s", "_ms", "_us", "_mb", "_p20_p80"))
    )


def _fmt_time(s: float) -> str:
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if s >= scale:
            return f"{s / scale:.3g} {unit}"
    return f"{s / 1e-9:.3g} ns"


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, list):
        return "-".join(_fmt(x) for x in v)
    return "" if v is None else str(v)


def markdown(family: str, rows: list[Row]) -> str:
    env = {}
    for r in rows:
        env.update({k: v for k, v in r.env.items() if v is not None})
    lines = [f"# {family}", ""]
    if env:
        lines += ["Measured on: " + ", ".join(f"{k} {v}" for k, v in env.items()), ""]
    for bench in dict.fromkeys(r.bench for r in rows):
        group = [r for r in rows if r.bench == bench]
        metrics = list(dict.fromkeys(k for r in group for k in r.fields))
        head = ["case", "provider", "median", "p20-p80", *metrics]
        lines += [f"## {bench}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in group:
            cells = [r.case, r.provider, _fmt_time(r.median_s), f"{_fmt_time(r.p20_s)} - {_fmt_time(r.p80_s)}"]
            cells += [_fmt(r.fields.get(m)) for m in metrics]
            lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
        lines.append("")
    return "\n".join(lines)


def headline(group: list[Row]) -> tuple[str, dict]:
    """The metric to plot for a bench and its value per row (median seconds when the bench derived none)."""
    for m in METRICS:
        if all(isinstance(r.fields.get(m), (int, float)) for r in group):
            return m, {id(r): float(r.fields[m]) for r in group}
    return "median_s", {id(r): r.median_s for r in group}


def plot(family: str, rows: list[Row], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    benches = list(dict.fromkeys(r.bench for r in rows))
    fig, axes = plt.subplots(len(benches), 1, figsize=(11, 3.2 * len(benches)), squeeze=False)
    for ax, bench in zip(axes[:, 0], benches):
        group = [r for r in rows if r.bench == bench]
        metric, value = headline(group)
        cases = list(dict.fromkeys(r.case for r in group))
        providers = list(dict.fromkeys(r.provider for r in group))
        width = 0.8 / len(providers)
        for i, provider in enumerate(providers):
            xs, ys = [], []
            for j, case in enumerate(cases):
                hit = [r for r in group if r.case == case and r.provider == provider]
                if hit:
                    xs.append(j + i * width)
                    ys.append(value[id(hit[0])])
            ax.bar(xs, ys, width, label=provider)
        vals = [v for v in value.values() if v > 0]
        if vals and max(vals) / min(vals) > 100:
            ax.set_yscale("log")
        better = "lower" if metric in LOWER_IS_BETTER or metric == "median_s" else "higher"
        ax.set_title(f"{family}: {bench} ({metric}, {better} is better)", fontsize=9)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(cases))])
        ax.set_xticklabels([_short(c) for c in cases], rotation=30, ha="right", fontsize=7)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _short(case: str, n: int = 48) -> str:
    return case if len(case) <= n else case[: n - 1] + "~"


def kernel_resources(results: list[dict]) -> str:
    """Markdown table of `_aot --json` results, worst occupancy first within each kernel."""
    lines = [
        "# Triton kernel resources (compiled ahead of time, no GPU needed)",
        "",
        "`python -m fastllm.kernels.triton._aot`: every configuration a launcher can pick, per architecture. Spills "
        "(stack or local bytes) must be 0; occupancy is resident warps over 64 per SM.",
        "",
        "| kernel config | arch | regs | shared B | stack B | local B | blocks/SM | occupancy |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in sorted(results, key=lambda r: (r["name"].split("[")[0], r["arch"], r["occupancy"], r["name"])):
        arch = f"sm_{r['arch']}{'a' if r['arch'] >= 90 else ''}"
        lines.append(
            f"| `{r['name']}` | {arch} | {r['regs']} | {r['shared']} | {r['stack']} | {r['local']} | "
            f"{r['blocks_per_sm']} | {r['occupancy']:.0%} |"
        )
    return "\n".join(lines) + "\n"


def write_report(rows: list[Row], out: Path, *, png: bool = True, aot: list[dict] | None = None) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    by_family: dict[str, list[Row]] = defaultdict(list)
    for r in rows:
        by_family[r.family].append(r)
    written, index = [], ["# fastllm benchmark report", ""]
    for family in sorted(by_family):
        md = out / f"{family}.md"
        md.write_text(markdown(family, by_family[family]))
        written.append(md)
        index.append(f"- [{family}]({md.name})" + (f" ![{family}]({family}.png)" if png else ""))
        if png:
            plot(family, by_family[family], out / f"{family}.png")
            written.append(out / f"{family}.png")
    if aot is not None:
        (out / "kernels.md").write_text(kernel_resources(aot))
        written.append(out / "kernels.md")
        index.append("- [Triton kernel resources: registers, shared memory, spills, occupancy](kernels.md)")
    (out / "index.md").write_text("\n".join(index) + "\n")
    return [*written, out / "index.md"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m fastllm.bench_report", description=__doc__.split("\n\n")[0])
    ap.add_argument("json", nargs="+", type=Path, help="pytest-benchmark JSON file(s) (--benchmark-json)")
    ap.add_argument("--out", type=Path, default=Path("benches/report"), help="output folder (default: %(default)s)")
    ap.add_argument("--no-png", action="store_true", help="Markdown only")
    ap.add_argument("--aot", type=Path, help="JSON of `python -m fastllm.kernels.triton._aot --json` to add")
    args = ap.parse_args(argv)
    rows = load_rows(args.json)
    if not rows:
        print("bench_report: no timed benchmarks in the input (was it run with --benchmark?)", file=sys.stderr)
        return 1
    aot = json.loads(args.aot.read_text()) if args.aot else None
    for path in write_report(rows, args.out, png=not args.no_png, aot=aot):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
