"""Tokenizer speed: fastllm against tiktoken, HF tokenizers, rs-bpe, bpe-openai and tokie, in one run.

    pytest benches/bench_tokenizer.py --benchmark      # timed; prints a summary table at the end
    pytest benches/bench_tokenizer.py                  # every case once, as an equivalence check

Corpora (../shared/corpora): english = english_kjv.txt, code = python_stdlib.txt, unicode = fortunes_{de,ru,zh}.txt
concatenated. Encodings: GPT-2 and cl100k (rs-bpe and bpe-openai ship cl100k only).

What is measured, always the full Python call that returns Python lists:
  * encode, 1 thread: one call on the whole corpus (fastllm: num_threads=1); MB/s of UTF-8 input.
  * encode, 2 threads: the corpus as a batch of 100-line chunks, each library's batch API on 2 threads
    (HF tokenizers and tokie run on rayon: RAYON_NUM_THREADS=2 is set before they start their pool).
  * decode: the corpus's ids back to str; MB/s of UTF-8 output.
  * load: from the files each library reads (fastllm: encoder.json + vocab.bpe / .tiktoken; tiktoken: .tiktoken;
    HF and tokie: tokenizer.json; rs-bpe and bpe-openai: their bundled data). Timed in-process over rounds, and once
    in a fresh interpreter for the first-load time and the RSS growth it causes. fastllm's Tokenizer.from_file is
    timed apart (test_load_tokenizer_json) on the HF-written tokenizer.json and on one written by Tokenizer.save.
  * worst case, ms per MB: text without whitespace (10 MB of the English corpus, mostly pieces of 25-100 bytes) and
    single giant pieces: 10 MB of random letters, a word repeated over 10 MB, runs of 1M 'a' / 'é' / an emoji, and
    1M random CJK characters. tiktoken takes ~10 s per call on the 10 MB pieces, so it is timed over one round.
    fastllm spreads a call on a text of 256 kB or more over threads (up to the hardware's, at most 8; the ids are
    the same): a text of many pieces in groups of pieces, a giant piece cut into parts; `threads` records how many
    the call used (`threads_per_piece`: how many its largest piece used).
Every case first asserts that fastllm's ids equal tiktoken's on that input, then times, then checks the timed
provider's own output: exact providers must equal tiktoken; tokie is fast but not exact, so whether it matched is
recorded, not asserted. `speedup_vs_tiktoken` compares medians measured in the same session.
"""

from __future__ import annotations

import gc
import json
import os
import random
import shutil
import string
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable

os.environ.setdefault("RAYON_NUM_THREADS", "2")  # before HF tokenizers / tokie create their rayon pools
os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")

import pytest  # noqa: E402

from fastllm import _bpe_py  # noqa: E402

SHARED = Path(os.environ.get("FASTLLM_SHARED", Path(__file__).resolve().parents[1].parent / "shared"))
CORPORA = SHARED / "corpora"
# Files written once per session (HF tokenizer.json); a fresh interpreter measuring first loads inherits the path.
_OWNS_TMP = "FASTLLM_BENCH_TMP" not in os.environ
if _OWNS_TMP:
    os.environ["FASTLLM_BENCH_TMP"] = tempfile.mkdtemp(prefix="fastllm-bench-")
TMP = Path(os.environ["FASTLLM_BENCH_TMP"])
GPT2_DIR = SHARED / "data" / "gpt2"
ENCODER_JSON, VOCAB_BPE, GPT2_TIKTOKEN = GPT2_DIR / "encoder.json", GPT2_DIR / "vocab.bpe", GPT2_DIR / "gpt2.tiktoken"
CL100K_TIKTOKEN = SHARED / "data" / "cl100k" / "cl100k_base.tiktoken"
CORPUS_FILES = {
    "english": ["english_kjv.txt"],
    "code": ["python_stdlib.txt"],
    "unicode": ["fortunes_de.txt", "fortunes_ru.txt", "fortunes_zh.txt"],
}
THREADS = 2
LINES_PER_CHUNK = 100
SPECIALS = {"gpt2": {"<|endoftext|>": 50256}, "cl100k": {"<|endoftext|>": 100257}}
# cl100k as HF tokenizer.json files spell it (tiktoken's possessive spelling means something else to Oniguruma).
HF_CL100K_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"""
    r"""|\s+(?!\S)|\s+"""
)


def require_files(*paths: Path) -> None:
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        pytest.skip(f"shared data not found (expected ../shared beside the repo): {', '.join(missing)}")


def require_peer(module: str, distribution: str):
    return pytest.importorskip(module, reason=f"peer {distribution} is not installed")


@pytest.fixture(scope="module", autouse=True)
def _remove_tmp():
    yield
    if _OWNS_TMP:
        shutil.rmtree(TMP, ignore_errors=True)


# ---- inputs and the tiktoken reference ---------------------------------------------------------------------


@lru_cache(maxsize=None)
def corpus(name: str) -> str:
    paths = [CORPORA / f for f in CORPUS_FILES[name]]
    require_files(*paths)
    return "".join(p.read_text(encoding="utf-8") for p in paths)


@lru_cache(maxsize=None)
def corpus_chunks(name: str) -> tuple[str, ...]:
    lines = corpus(name).splitlines(keepends=True)
    return tuple("".join(lines[i : i + LINES_PER_CHUNK]) for i in range(0, len(lines), LINES_PER_CHUNK))


def _random_text(alphabet: str, n: int) -> str:
    rng = random.Random(0)
    return "".join(rng.choices(alphabet, k=n))


def _no_spaces() -> str:
    stripped = "".join(corpus("english").split())
    return (stripped * (10_000_000 // len(stripped) + 1))[:10_000_000]


WORST_CASES = {  # name -> text; each but the first is one piece under the GPT-2 and cl100k patterns
    "10MB-no-spaces": _no_spaces,
    "letters-10MB": lambda: _random_text(string.ascii_lowercase, 10_000_000),
    "word-10MB": lambda: ("tokenization" * 833_334)[:10_000_000],
    "a*1MB": lambda: "a" * 1_000_000,
    "e-acute*1M": lambda: "\u00e9" * 1_000_000,
    "emoji*1M": lambda: "\U0001f600" * 1_000_000,
    "cjk-1M-chars": lambda: _random_text([chr(c) for c in range(0x4E00, 0xA000)], 1_000_000),
}


@lru_cache(maxsize=None)
def worst_case_text(case: str) -> str:
    return WORST_CASES[case]()


def new_tiktoken_encoding(encoding: str):
    import tiktoken
    import tiktoken.load

    path = GPT2_TIKTOKEN if encoding == "gpt2" else CL100K_TIKTOKEN
    require_files(path)
    ranks = tiktoken.load.load_tiktoken_bpe(str(path))
    return tiktoken.Encoding(
        encoding, pat_str=_bpe_py.PATTERNS[encoding], mergeable_ranks=ranks, special_tokens=SPECIALS[encoding]
    )


tiktoken_encoding = lru_cache(maxsize=None)(new_tiktoken_encoding)


@lru_cache(maxsize=None)
def expected_ids(encoding: str, source: str, batched: bool = False):
    """tiktoken's ids for a corpus (whole, or as the chunk batch) or a worst-case text."""
    enc = tiktoken_encoding(encoding)
    if batched:
        return enc.encode_ordinary_batch(list(corpus_chunks(source)), num_threads=THREADS)
    return enc.encode_ordinary(worst_case_text(source) if source in WORST_CASES else corpus(source))


@lru_cache(maxsize=None)
def hf_json(encoding: str) -> str:
    """A tokenizer.json written by HF tokenizers itself (read by HF and tokie)."""
    from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers
    from tokenizers import Tokenizer as HFTokenizer

    path = TMP / f"hf_{encoding}.json"
    if path.is_file():
        return str(path)
    if encoding == "gpt2":
        require_files(ENCODER_JSON, VOCAB_BPE)
        tok = HFTokenizer(models.BPE.from_file(str(ENCODER_JSON), str(VOCAB_BPE)))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    else:
        ranks = tiktoken_encoding("cl100k")._mergeable_ranks
        to_str = _bpe_py.token_bytes_to_str
        vocab = {to_str(t): r for t, r in ranks.items()} | SPECIALS["cl100k"]
        merges = [(to_str(a), to_str(b)) for a, b in _bpe_py.merges_from_ranks(ranks)]
        tok = HFTokenizer(models.BPE(vocab, merges))
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(HF_CL100K_PATTERN), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in SPECIALS[encoding]])
    tok.save(str(path))
    return str(path)


# ---- providers -----------------------------------------------------------------------------------------------


@dataclass
class Adapter:
    """One library's encode / batch encode / decode, each a full call that returns Python objects."""

    encode: Callable[[str], list[int]]  # on one thread
    encode_batch: Callable[[list[str]], list[list[int]]]
    decode: Callable[[list[int]], str]
    encode_call: Callable[[str], list[int]] | None = None  # one call with the library's default threads, if other


def _fastllm(encoding: str) -> Adapter:
    from fastllm.tokenizer import Tokenizer

    if encoding == "gpt2":
        tok = Tokenizer.from_vocab_merges(ENCODER_JSON, VOCAB_BPE)
    else:
        tok = Tokenizer.from_tiktoken(CL100K_TIKTOKEN, pattern="cl100k")
    return Adapter(
        lambda text: tok.encode_ordinary(text, num_threads=1),
        lambda texts: tok.encode_ordinary_batch(texts, num_threads=THREADS),
        tok.decode,
        tok.encode_ordinary,
    )


def _tiktoken(encoding: str) -> Adapter:
    enc = new_tiktoken_encoding(encoding)  # not the cached one: load timing must read the file
    return Adapter(enc.encode_ordinary, lambda texts: enc.encode_ordinary_batch(texts, num_threads=THREADS), enc.decode)


def _hf(encoding: str) -> Adapter:
    from tokenizers import Tokenizer as HFTokenizer

    tok = HFTokenizer.from_file(hf_json(encoding))
    return Adapter(
        lambda text: tok.encode(text, add_special_tokens=False).ids,
        lambda texts: [e.ids for e in tok.encode_batch(texts, add_special_tokens=False)],
        tok.decode,
    )


def _rs_bpe(encoding: str) -> Adapter:
    from rs_bpe.bpe import openai

    tok = openai.cl100k_base()
    options = openai.ParallelOptions(1, 16, THREADS)  # (min_batch_size, chunk_size, max_threads)
    return Adapter(tok.encode, lambda texts: tok.encode_batch_parallel(texts, options)[0], tok.decode)


def _bpe_openai(encoding: str) -> Adapter:
    import bpe_openai
    from bpe_openai import _bindings

    # The tiktoken-style wrapper refuses texts of 1M characters or more; its Rust binding has no such limit.
    core = _bindings.tokenizer_for_encoding("cl100k_base")
    enc = bpe_openai.get_encoding("cl100k_base")
    return Adapter(core.encode, lambda texts: enc.encode_ordinary_batch(texts, num_threads=THREADS), core.decode)


def _tokie(encoding: str) -> Adapter:
    import tokie

    tok = tokie.Tokenizer.from_json(hf_json(encoding))
    return Adapter(
        lambda text: tok.encode(text, add_special_tokens=False).ids,
        lambda texts: [e.ids for e in tok.encode_batch(texts, add_special_tokens=False)],
        tok.decode,
    )


@dataclass(frozen=True)
class Provider:
    load: Callable[[str], Adapter]
    module: str  # imported (or the bench skipped) before anything runs
    distribution: str
    encodings: tuple[str, ...]
    exact: bool = True


PROVIDERS = {  # tiktoken first: the others' speedups divide by its time from the same session
    "tiktoken": Provider(_tiktoken, "tiktoken", "tiktoken", ("gpt2", "cl100k")),
    "fastllm": Provider(_fastllm, "fastllm._bpe", "fastllm", ("gpt2", "cl100k")),
    "hf-tokenizers": Provider(_hf, "tokenizers", "tokenizers", ("gpt2", "cl100k")),
    "rs-bpe": Provider(_rs_bpe, "rs_bpe", "rs_bpe", ("cl100k",)),
    "bpe-openai": Provider(_bpe_openai, "bpe_openai", "bpe-openai", ("cl100k",)),
    "tokie": Provider(_tokie, "tokie", "tokie", ("gpt2", "cl100k"), exact=False),
}


@lru_cache(maxsize=None)
def adapter(provider: str, encoding: str) -> Adapter:
    require_peer(PROVIDERS[provider].module, PROVIDERS[provider].distribution)
    return PROVIDERS[provider].load(encoding)


def cases(*axes: list) -> list:
    """(provider, encoding, *rest) for every provider that supports the encoding, tiktoken first in each group."""
    out = []
    for encoding in ("gpt2", "cl100k"):
        for rest in _product(*axes):
            for name, p in PROVIDERS.items():
                if encoding in p.encodings:
                    out.append(pytest.param(name, encoding, *rest, id="-".join([encoding, *map(str, rest), name])))
    return out


def _product(*axes):
    if not axes:
        return [()]
    return [(a, *rest) for a in axes[0] for rest in _product(*axes[1:])]


# ---- same-session ratios ---------------------------------------------------------------------------------------

_TIKTOKEN_MEDIAN: dict[tuple, float] = {}


def record(bench, provider: str, key: tuple, nbytes: int | None, matches: bool, *, seconds=None, **fields) -> None:
    """extra_info + a summary row. `key` identifies the case across providers; `seconds` (default: the median)
    is the time the speedup over tiktoken is computed from."""
    p = PROVIDERS[provider]
    bench.info(peer=None if provider == "fastllm" else p.distribution, provider=provider, exact=p.exact,
               matches_tiktoken=matches, **fields)  # fmt: skip
    mbps = bench.throughput(nbytes) if nbytes is not None else None
    seconds = bench.median_s if seconds is None else seconds
    if provider == "tiktoken" and seconds is not None:
        _TIKTOKEN_MEDIAN[key] = seconds
    speedup = None
    if seconds is not None and key in _TIKTOKEN_MEDIAN:
        speedup = round(_TIKTOKEN_MEDIAN[key] / seconds, 2)
        bench.extra_info["speedup_vs_tiktoken"] = speedup
    bench.row(
        case=key[0], encoding=key[1], input=key[2], provider=provider,
        mb_per_s=None if mbps is None else round(mbps, 1),
        p20_p80=bench.extra_info.get("mb_per_s_p20_p80"),
        speedup_vs_tiktoken=speedup, matches=matches,
        **{k: v for k, v in fields.items() if k.endswith(("_ms", "rss_delta_mb", "_per_piece"))},
    )  # fmt: skip


def check_fastllm(encoding: str, source: str, batched: bool = False) -> None:
    """Equivalence before speed: fastllm's ids on this input equal tiktoken's."""
    fl = adapter("fastllm", encoding)
    expected = expected_ids(encoding, source, batched)
    if batched:
        got = fl.encode_batch(list(corpus_chunks(source)))
    else:
        got = fl.encode(worst_case_text(source) if source in WORST_CASES else corpus(source))
    assert got == expected, f"fastllm differs from tiktoken on {encoding}/{source} (batched={batched})"


def check_provider(provider: str, got, expected, what: str) -> bool:
    matches = got == expected
    if PROVIDERS[provider].exact:
        assert matches, f"{provider} differs from tiktoken on {what}"
    return matches


# ---- benches -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("provider, encoding, corpus_name, threads", cases(list(CORPUS_FILES), [1, THREADS]))
def test_encode(bench, provider, encoding, corpus_name, threads):
    text = corpus(corpus_name)
    tok = adapter(provider, encoding)
    check_fastllm(encoding, corpus_name, batched=threads > 1)
    if threads == 1:
        got = bench(tok.encode, text, rounds=5, warmup_rounds=1)
    else:
        chunks = list(corpus_chunks(corpus_name))
        got = bench(tok.encode_batch, chunks, rounds=5, warmup_rounds=1)
    matches = check_provider(provider, got, expected_ids(encoding, corpus_name, threads > 1), corpus_name)
    key = (f"encode-{threads}t", encoding, corpus_name)
    nbytes = len(text.encode("utf-8"))
    record(bench, provider, key, nbytes, matches, encoding=encoding, corpus=corpus_name, threads=threads,
           batch=None if threads == 1 else len(corpus_chunks(corpus_name)))  # fmt: skip


@pytest.mark.parametrize("provider, encoding, corpus_name", cases(list(CORPUS_FILES)))
def test_decode(bench, provider, encoding, corpus_name):
    text = corpus(corpus_name)
    tok = adapter(provider, encoding)
    ids = expected_ids(encoding, corpus_name)
    assert adapter("fastllm", encoding).decode(ids) == text  # equivalence before speed
    got = bench(tok.decode, ids, rounds=5, warmup_rounds=1)
    matches = check_provider(provider, got, text, f"decode {corpus_name}")
    record(bench, provider, ("decode", encoding, corpus_name), len(text.encode("utf-8")), matches,
           encoding=encoding, corpus=corpus_name, tokens=len(ids))  # fmt: skip


@pytest.mark.parametrize("provider, encoding", cases())
def test_load(bench, provider, encoding):
    p = PROVIDERS[provider]
    require_peer(p.module, p.distribution)
    if provider in ("hf-tokenizers", "tokie"):
        hf_json(encoding)  # written once, outside the timing
    tok = bench(p.load, encoding, rounds=3, warmup_rounds=0)
    sample = corpus("english")[:100_000]
    enc = tiktoken_encoding(encoding)
    matches = check_provider(provider, tok.encode(sample), enc.encode_ordinary(sample), "load + encode sample")
    # In-process reloads can hit a library's cache (rs-bpe and bpe-openai keep their tables in statics), so the
    # speedup compares the first load in a fresh interpreter.
    load_ms = first_ms = rss_mb = first_s = None
    if bench.timing:  # a measurement, not an equivalence check: only with --benchmark
        load_ms = round(bench.median_s * 1e3, 1)
        first = first_load_in_fresh_interpreter(provider, encoding)
        first_s, rss_mb = first["seconds"], round(first["rss_delta_bytes"] / 2**20, 1)
        first_ms = round(first_s * 1e3, 1)
    record(bench, provider, ("load", encoding, "-"), None, matches, seconds=first_s, encoding=encoding,
           first_load_ms=first_ms, reload_ms=load_ms, rss_delta_mb=rss_mb)  # fmt: skip


@lru_cache(maxsize=None)
def fastllm_json(encoding: str) -> str:
    """A tokenizer.json written by fastllm's Tokenizer.save (cl100k: 100k merges, one per token BPE builds)."""
    from fastllm.tokenizer import Tokenizer

    path = TMP / f"fastllm_{encoding}.json"
    if not path.is_file():
        require_files(ENCODER_JSON, VOCAB_BPE, CL100K_TIKTOKEN)
        if encoding == "gpt2":
            tok = Tokenizer.from_vocab_merges(ENCODER_JSON, VOCAB_BPE)
        else:
            tok = Tokenizer.from_tiktoken(CL100K_TIKTOKEN, pattern="cl100k")
        tok.save(path)
    return str(path)


@pytest.mark.parametrize("encoding, writer", [(e, w) for e in ("gpt2", "cl100k") for w in ("hf", "fastllm")])
def test_load_tokenizer_json(bench, encoding, writer):
    """fastllm's Tokenizer.from_file on a tokenizer.json written by HF tokenizers (the file the hf-tokenizers and
    tokie rows of test_load read) or by Tokenizer.save."""
    from fastllm.tokenizer import Tokenizer

    path = hf_json(encoding) if writer == "hf" else fastllm_json(encoding)  # written once, outside the timing
    tok = bench(Tokenizer.from_file, path, rounds=5, warmup_rounds=1)
    sample = corpus("english")[:100_000]
    expected = tiktoken_encoding(encoding).encode_ordinary(sample)
    matches = check_provider("fastllm", tok.encode_ordinary(sample), expected, "from_file + encode sample")
    load_ms = round(bench.median_s * 1e3, 1) if bench.timing else None
    record(bench, "fastllm", ("load tokenizer.json", encoding, f"{writer}-written"), None, matches,
           encoding=encoding, writer=writer, reload_ms=load_ms)  # fmt: skip


@pytest.mark.parametrize("provider, encoding, case", [
    pytest.param(p, e, c, id=f"{e}-{c}-{p}") for e in ("gpt2", "cl100k") for c in WORST_CASES
    for p in ("tiktoken", "fastllm")
])  # fmt: skip
def test_worst_case(bench, provider, encoding, case):
    text = worst_case_text(case)
    check_fastllm(encoding, case)
    slow = provider == "tiktoken"  # up to ~10 s a call here
    a = adapter(provider, encoding)
    got = bench(a.encode_call or a.encode, text, rounds=1 if slow else 3, warmup_rounds=0 if slow else 1)
    matches = check_provider(provider, got, expected_ids(encoding, case), case)
    nbytes = len(text.encode("utf-8"))
    ms_per_mb = None if bench.median_s is None else round(bench.median_s * 1e3 / (nbytes / 1e6), 1)
    bench.extra_info["ms_per_mb"] = ms_per_mb
    threads, per_piece = call_threads(encoding, case) if provider == "fastllm" else (1, 1)
    record(bench, provider, ("worst-case", encoding, case), nbytes, matches, encoding=encoding, case=case,
           per_mb_ms=ms_per_mb, threads=threads, threads_per_piece=per_piece)  # fmt: skip


@lru_cache(maxsize=None)
def call_threads(encoding: str, case: str) -> tuple[int, int]:
    """The threads fastllm's encode uses on a worst-case text, and those its largest piece uses."""
    from fastllm import _bpe

    text = worst_case_text(case)
    sizes = [len(p.encode("utf-8")) for p in _bpe.pretokenize(text, _bpe_py.PATTERNS[encoding])]
    groups = _bpe.text_parts(len(text.encode("utf-8")), max(sizes), len(sizes))
    per_piece = 1 if groups > 1 else _bpe.piece_parts(max(sizes))
    return max(groups, per_piece), per_piece


# ---- first load in a fresh interpreter -----------------------------------------------------------------------


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _measure_first_load(provider: str, encoding: str) -> dict:
    """Run in a fresh interpreter: import the library, then time one load and the RSS it adds."""
    p = PROVIDERS[provider]
    __import__(p.module)
    gc.collect()
    rss = _rss_bytes()
    start = time.perf_counter()
    tok = p.load(encoding)
    seconds = time.perf_counter() - start
    gc.collect()
    return {"seconds": seconds, "rss_delta_bytes": _rss_bytes() - rss, "tokens": len(tok.encode("hello world"))}


def first_load_in_fresh_interpreter(provider: str, encoding: str) -> dict:
    code = (
        "import importlib.util, json, sys\n"
        f"spec = importlib.util.spec_from_file_location('bench_tokenizer', {__file__!r})\n"
        "mod = sys.modules['bench_tokenizer'] = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(mod)\n"
        f"print(json.dumps(mod._measure_first_load({provider!r}, {encoding!r})))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])
