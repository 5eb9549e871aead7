"""The README's CPU decode table, from a `pytest benches/bench_generate.py --benchmark --benchmark-json=out.json` run.

    python tools/decode_table.py out.json > table.md

Prints Markdown: ms per decode step per GPT-2 case and provider (tokens/s for the compiled providers), the speedup of
the best fastllm provider over transformers, the fraction of the bandwidth bound reached, the SWA-MLA rows and the
int8 perplexity change. Numbers come from the JSON only.
"""

import json
import sys


def infos(path: str, name: str) -> list[dict]:
    data = json.load(open(path))
    return [b["extra_info"] for b in data["benchmarks"] if b["name"].startswith(name + "[") and b.get("stats")]


def gpt2_table(rows: list[dict]) -> str:
    cases: dict[tuple, dict] = {}
    for e in rows:
        shape = e["shape"]  # "GPT-2 124M, prompt P, batch B, ..."
        prompt = int(shape.split("prompt ")[1].split(",")[0])
        batch = int(shape.split("batch ")[1].split(",")[0])
        cases.setdefault((e["dtype"], prompt, batch), {})[e["provider"]] = e
    # the bench's providers in the order it ran them (transformers first: the others are compared with it)
    providers = sorted(dict.fromkeys(e["provider"] for e in rows), key=lambda p: p != "transformers")
    head = ["GPT-2 124M", *providers, "best vs transformers", "best vs bound"]
    out = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for (dtype, prompt, batch), by in cases.items():
        cells = []
        for p in providers:
            e = by.get(p)
            if e is None:
                cells.append("–")
                continue
            tok = f" ({e['tok_per_s']:.0f} tok/s)" if p.endswith("compile") else ""
            cells.append(f"{e['ms_per_token']:.1f} ms{tok}")
        fast = [e for p, e in by.items() if p != "transformers"]
        best = min(fast, key=lambda e: e["ms_per_token"]) if fast else None
        speed = f"{best['speedup_vs_transformers']:.2f}x ({best['provider']})" if best and "transformers" in by else "–"
        bound = f"{best['bound_fraction']:.0%} of {best['bound_ms']:.1f} ms" if best else "–"
        out.append(f"| {dtype}, prompt {prompt}, batch {batch} | " + " | ".join(cells) + f" | {speed} | {bound} |")
    return "\n".join(out)


def main(path: str) -> None:
    print(gpt2_table(infos(path, "test_generate_gpt2")))
    print()
    for e in infos(path, "test_generate_swa_mla"):
        print(f"- SWA-MLA 262M, {e['provider']}: {e['ms_per_token']:.1f} ms/token (bound {e['bound_ms']:.1f} ms)")
    for e in infos(path, "test_int8_perplexity"):
        print(
            f"- int8 perplexity, bundled model, {e['tokens']} tokens of {e['shape'].split(', ')[-1]}: "
            f"{e['ppl_fp32']} -> {e['ppl_int8']} ({e['ppl_delta_pct']:+.3f}%)"
            + (f"; w8a8 {e['ppl_w8a8']} ({e['ppl_w8a8_delta_pct']:+.3f}%)" if "ppl_w8a8" in e else "")
        )
    bw = {e["bandwidth_gb_s"] for e in infos(path, "test_generate_gpt2") if "bandwidth_gb_s" in e}
    if bw:
        print(f"- read bandwidth measured in the run: {', '.join(f'{b:.1f}' for b in sorted(bw))} GB/s")


if __name__ == "__main__":
    main(sys.argv[1])
