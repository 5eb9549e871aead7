"""`python -m fastllm.bench_report`: pytest-benchmark JSON in, one Markdown table + PNG per bench family out."""

import json

import pytest

from fastllm import bench_report


def _bench(fullname, provider, median, **extra):
    info = {"provider": provider, "median_s": median, "p20_s": median * 0.9, "p80_s": median * 1.1, **extra}
    return {"name": fullname.split("::")[1], "fullname": fullname, "stats": {"median": median}, "extra_info": info}


@pytest.fixture
def run_json(tmp_path):
    benches = [
        _bench("benches/bench_tokenizer.py::test_encode[a]", "fastllm", 0.010, corpus="english", mb_per_s=100.0),
        _bench("benches/bench_tokenizer.py::test_encode[b]", "tiktoken", 0.050, corpus="english", mb_per_s=20.0),
        _bench("benches/bench_glu.py::test_glu[c]", "triton", 2e-4, shape="T=3 F=97", cpu="X", commit="abc1234"),
        {"name": "test_untimed", "fullname": "benches/bench_glu.py::test_untimed", "stats": None, "extra_info": {}},
    ]
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"machine_info": {}, "benchmarks": benches}))
    return path


def test_report_tables_and_plots(run_json, tmp_path):
    out = tmp_path / "report"
    assert bench_report.main([str(run_json), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["glu.md", "glu.png", "index.md", "tokenizer.md", "tokenizer.png"]
    tok = (out / "tokenizer.md").read_text()
    assert "| corpus=english | fastllm | 10 ms | 9 ms - 11 ms | 100 |" in tok
    assert "| corpus=english | tiktoken | 50 ms | 45 ms - 55 ms | 20 |" in tok
    glu = (out / "glu.md").read_text()
    assert "Measured on: cpu X, commit abc1234" in glu and "| T=3 F=97 | triton | 200 us |" in glu
    assert (out / "glu.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "[glu](glu.md)" in (out / "index.md").read_text()


def test_report_rejects_what_is_not_a_benchmark_run(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    with pytest.raises(SystemExit, match="not pytest-benchmark JSON"):
        bench_report.main([str(bad)])
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"benchmarks": []}))
    assert bench_report.main([str(empty), "--out", str(tmp_path / "o")]) == 1
    assert "run with --benchmark" in capsys.readouterr().err


def test_report_adds_the_aot_kernel_resources(run_json, tmp_path):
    aot = [
        dict(
            name="swa_fwd[bf16,D=64]",
            arch=90,
            regs=128,
            shared=65536,
            stack=0,
            local=0,
            blocks_per_sm=2,
            occupancy=0.25,
        ),
        dict(
            name="swa_fwd[bf16,D=64]",
            arch=80,
            regs=168,
            shared=49152,
            stack=0,
            local=0,
            blocks_per_sm=1,
            occupancy=0.125,
        ),
    ]
    path = tmp_path / "aot.json"
    path.write_text(json.dumps(aot))
    out = tmp_path / "report"
    assert bench_report.main([str(run_json), "--out", str(out), "--no-png", "--aot", str(path)]) == 0
    table = (out / "kernels.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    assert rows == [
        "| `swa_fwd[bf16,D=64]` | sm_80 | 168 | 49152 | 0 | 0 | 1 | 12% |",
        "| `swa_fwd[bf16,D=64]` | sm_90a | 128 | 65536 | 0 | 0 | 2 | 25% |",
    ]
    assert "(kernels.md)" in (out / "index.md").read_text()


@pytest.mark.parametrize("key", ["bw_fraction", "us_per_call", "greedy_match", "bound_ms", "bandwidth_gb_s", "tflops"])
def test_metric_keys_are_columns(key):
    assert bench_report._is_metric(key)


@pytest.mark.parametrize("key", ["shape", "dtype", "threads", "num_splits", "model", "T"])
def test_case_keys_are_not_metrics(key):
    assert not bench_report._is_metric(key)
