"""The README's tokenizer tables, from a `pytest benches/bench_tokenizer.py --benchmark --benchmark-json=out.json` run.

    python tools/tokenizer_tables.py out.json > tables.md

Prints Markdown: encode MB/s at 1 and 2 threads and decode MB/s (each provider's ratio to tiktoken in the same run;
a provider whose ids differ from tiktoken's is marked with a not-equal sign), load times, and ms per MB on one giant
piece. Numbers come from the JSON only.
"""

import json
import sys
from collections import defaultdict

PEERS = ["fastllm", "tiktoken", "hf-tokenizers", "rs-bpe", "bpe-openai", "tokie"]


def rows(path: str, name: str) -> list[dict]:
    data = json.load(open(path))
    return [b["extra_info"] for b in data["benchmarks"] if b["name"].startswith(name + "[") and b.get("stats")]


def throughput_table(infos: list[dict], title: str, threads=None) -> str:
    cells: dict[tuple, dict] = defaultdict(dict)
    for e in infos:
        if threads is not None and e.get("threads") != threads:
            continue
        cells[(e["encoding"], e["corpus"])][e["provider"]] = e
    out = [title, "", "| encoding / corpus | " + " | ".join(PEERS) + " |", "|---" * (len(PEERS) + 1) + "|"]
    for (encoding, corpus), by in cells.items():
        line = []
        for p in PEERS:
            e = by.get(p)
            if e is None:
                line.append("–")
                continue
            mark = "" if e.get("matches_tiktoken", True) else " ≠"
            ratio = "" if p == "tiktoken" else f" ({e['speedup_vs_tiktoken']:.2f}x)"
            line.append(f"{e['mb_per_s']:.1f}{ratio}{mark}")
        out.append(f"| {encoding} {corpus} | " + " | ".join(line) + " |")
    return "\n".join(out)


def load_table(infos: list[dict], json_infos: list[dict]) -> str:
    cells: dict[str, dict] = defaultdict(dict)
    for e in infos:
        cells[e["encoding"]][e["provider"]] = f"{e['first_load_ms']:.0f} ms / {e['rss_delta_mb']:.0f} MB"
    out = [
        "**Load** (first load in a fresh interpreter, ms / RSS added; fastllm from tiktoken files or GPT-2's files)",
        "",
        "| vocabulary | " + " | ".join(PEERS) + " |",
        "|---" * (len(PEERS) + 1) + "|",
    ]
    for encoding, by in cells.items():
        out.append(f"| {encoding} | " + " | ".join(by.get(p, "–") for p in PEERS) + " |")
    if json_infos:
        out += ["", "fastllm `Tokenizer.from_file(tokenizer.json)` (reload, ms): "]
        out[-1] += ", ".join(f"{e['encoding']} written by {e['writer']} {e['reload_ms']:.0f}" for e in json_infos)
    return "\n".join(out)


def worst_table(infos: list[dict]) -> str:
    cells: dict[tuple, dict] = defaultdict(dict)
    for e in infos:
        cells[(e["encoding"], e["case"])][e["provider"]] = e["per_mb_ms"]
    providers = [p for p in PEERS if any(p in by for by in cells.values())]
    out = [
        "**One giant piece**, ms per MB (same run)",
        "",
        "| vocabulary | input | " + " | ".join(providers) + " |",
        "|---|---" + "|---" * len(providers) + "|",
    ]
    for (encoding, case), by in cells.items():
        vals = [f"{by[p]:.1f}" if p in by else "–" for p in providers]
        out.append(f"| {encoding} | `{case}` | " + " | ".join(vals) + " |")
    return "\n".join(out)


def main(path: str) -> None:
    enc = rows(path, "test_encode")
    parts = [
        throughput_table(enc, "**Encode, 1 thread**, MB/s of UTF-8 (ratio to tiktoken in the same run):", 1),
        throughput_table(enc, "**Encode, `encode_batch` with 2 threads**, MB/s:", 2),
        throughput_table(rows(path, "test_decode"), "**Decode**, MB/s of UTF-8 produced:"),
        load_table(rows(path, "test_load"), rows(path, "test_load_tokenizer_json")),
        worst_table(rows(path, "test_worst_case")),
    ]
    print("\n\n".join(parts))


if __name__ == "__main__":
    main(sys.argv[1])
