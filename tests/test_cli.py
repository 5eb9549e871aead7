"""`python -m fastllm.generate` as a person runs it: batch mode in a subprocess on a tiny saved checkpoint, chat mode
through stdin and through a pseudo-terminal, and the user errors (one line on stderr, exit code 2, no traceback)."""

import importlib
import os
import re
import select
import subprocess
import sys
import time

import pytest
import torch

import fastllm
from fastllm import chat as chat_mod
from fastllm.engine import SamplingParams
from fastllm.models import ModelConfig, Transformer

CORPUS = "the cat sat on the mat. the dog ate the bone. a bird sang in the tree. " * 40
gen_mod = importlib.import_module("fastllm.generate")  # the module; `fastllm.generate` may be the function
ENV = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", FASTLLM_KERNELS="reference")  # threads only contend
METRICS = re.compile(
    r"^\[metrics\] prompts=(\d+) prompt_tokens=\d+ prefill=[\d.]+ ms decode=(\d+) tokens in [\d.]+ s "
    r"\([\d.]+ tok/s\) peak_memory=[\d.]+ MiB \((peak RSS|CUDA max allocated)\) device=cpu dtype=float32$",
    re.M,
)


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(1)
    tok = fastllm.train_bpe([CORPUS], 300, special_tokens=["<|endoftext|>"])
    cfg = ModelConfig.from_name(
        "llm-scratch-v2", n_layer=2, d_model=32, n_head=4, d_ff=48, vocab_size=tok.vocab_size, max_seq_len=48,
        lm_head_bias=True,
    )  # fmt: skip
    model = Transformer(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
        for i in range(tok.vocab_size):  # readable ASCII text from random weights
            s = tok.decode_bytes([i])
            if not (s.isascii() and s.decode().isprintable()) or i == tok.eot_token:
                model.lm_head.bias[i] = -1e4
    path = tmp_path_factory.mktemp("ckpt")
    fastllm.save(model, path, tokenizer=tok)
    return str(path)


def run_cli(*args, stdin=None, timeout=120):
    cmd = [sys.executable, "-m", "fastllm.generate", *args]
    return subprocess.run(cmd, input=stdin, capture_output=True, text=True, env=ENV, timeout=timeout)


def test_batch_mode_prints_completions_and_metrics(checkpoint, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("the cat\n\na bird sang\n", encoding="utf-8")  # blank lines are skipped
    r = run_cli(
        "--checkpoint", checkpoint, "--prompt", "the dog", "--prompts_file", str(prompts), "--max_new_tokens", "12",
        "--temperature", "0", "--device", "cpu", "--dtype", "float32",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    model, tok = fastllm.load(checkpoint)
    prompts = ["the dog", "the cat", "a bird sang"]
    want = fastllm.generate(model, tok, prompts, 12, temperature=0, repetition_penalty=1.1)
    for p, w in zip(prompts, want):
        assert f">>> {p}\n{w}\n\n" in r.stdout
    m = METRICS.search(r.stdout)
    assert m and m.group(1) == "3" and int(m.group(2)) == sum(len(tok.encode(w)) for w in want) > 0, r.stdout


def test_batch_mode_streams_and_is_reproducible_with_a_seed(checkpoint):
    args = ("--checkpoint", checkpoint, "--prompt", "the", "--max_new_tokens", "10", "--seed", "5", "--top_k", "0")
    streamed, whole = run_cli(*args, "--stream"), run_cli(*args)
    assert streamed.returncode == 0 and whole.returncode == 0, streamed.stderr + whole.stderr
    assert METRICS.search(streamed.stdout) and METRICS.search(whole.stdout)
    # the same seed draws the same text, printed as it decodes or once at the end
    assert streamed.stdout.split("[metrics]")[0] == whole.stdout.split("[metrics]")[0]
    assert len(whole.stdout.split("[metrics]")[0]) > len(">>> the\n\n\n")


CHAT_SCRIPT = "/help\n/temp 0\n/topk 5\n/topp 0.5\n/topp 2\n/topk x\n/nope\nhello there\n/clear\nthe cat\n/quit\n"


def test_chat_mode_through_stdin(checkpoint):
    r = run_cli("--checkpoint", checkpoint, "--mode", "chat", "--max_new_tokens", "6", stdin=CHAT_SCRIPT)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "fastllm chat (plain format, cpu)" in out and "/topp X" in out  # banner, /help
    assert "(temperature=0 top_k=50 top_p=0.9)" in out and "(temperature=0 top_k=5 top_p=0.5)" in out
    assert "(error: top_p must be in (0, 1], got 2.0)" in out and "(error: /topk needs an integer, got 'x')" in out
    assert "(unknown command /nope; /help lists the commands)" in out and "(conversation cleared)" in out
    replies = re.findall(r"Assistant:(.*)\n", out)
    assert len(replies) == 2
    # greedy after /temp 0: the first reply is the model's completion of the plain-format prompt
    model, tok = fastllm.load(checkpoint)
    sampling = SamplingParams(0.0, 5, 0.5, 0.0, 1.1)
    ids, _ = chat_mod.build_prompt(tok, chat_mod.FORMATS["plain"], None, [], "hello there", None)
    eos = [tok.eot_token]
    texts, _, _ = gen_mod.generate_rows(model, tok, [ids], 6, sampling=sampling, stops=["\nUser:"], eos=eos)
    assert replies[0] == texts[0]


def test_chat_mode_in_a_terminal(checkpoint):
    import pty

    master, slave = pty.openpty()
    cmd = [sys.executable, "-m", "fastllm.generate", "--checkpoint", checkpoint, "--max_new_tokens", "5"]
    proc = subprocess.Popen(cmd, stdin=slave, stdout=slave, stderr=slave, env=ENV, close_fds=True)
    os.close(slave)
    seen = b""

    def until(marker: bytes, count: int = 1, timeout: float = 60):
        nonlocal seen
        end = time.monotonic() + timeout
        while seen.count(marker) < count and time.monotonic() < end:
            if select.select([master], [], [], 0.5)[0]:
                try:
                    seen += os.read(master, 4096)
                except OSError:  # the child closed the terminal
                    break
        assert seen.count(marker) >= count, seen.decode(errors="replace")

    try:
        until(b"You: ")  # no --prompt: chat mode by default
        os.write(master, b"/temp 0.5\r")
        until(b"top_p=0.9)")
        os.write(master, b"hello\r")
        until(b"Assistant:")
        until(b"You: ", 3)
        os.write(master, b"/exit\r")
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
    assert b"Traceback" not in seen and b"(temperature=0.5 top_k=50 top_p=0.9)" in seen


def test_chat_formats_and_context_trimming():
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<USER>", "<ASSISTANT>", "<SYSTEM>"]
    tok = fastllm.train_bpe([CORPUS], 300, special_tokens=specials)
    F = chat_mod.FORMATS
    history = [("hi", "hello"), ("the cat", "sat")]

    def text(fmt, system=None, budget=None, msg="<|im_end|> bye"):
        ids, dropped = chat_mod.build_prompt(tok, F[fmt], system, history, msg, budget)
        return tok.decode(ids), dropped, ids

    s, _, _ = text("plain", "Be brief.")
    turns = "User: hi\nAssistant: hello\nUser: the cat\nAssistant: sat\n"
    assert s == f"Be brief.\n\n{turns}User: <|im_end|> bye\nAssistant:"
    assert text("transcript")[0].startswith("You: hi\nAssistant: hello\nYou: the cat")
    s, _, ids = text("chatml", "sys")
    assert s == (
        "<|im_start|>system\nsys<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nhello<|im_end|>\n"
        "<|im_start|>user\nthe cat<|im_end|>\n<|im_start|>assistant\nsat<|im_end|>\n"
        "<|im_start|>user\n<|im_end|> bye<|im_end|>\n<|im_start|>assistant\n"
    )
    end = tok.token_to_id("<|im_end|>")
    assert ids.count(end) == 6  # the template's six; the one the user typed is encoded as text
    assert text("inl", "sys")[0] == "<SYSTEM> sys\n<USER> hi\n<ASSISTANT> hello\n<USER> the cat\n<ASSISTANT> sat\n" + (
        "<USER> <|im_end|> bye\n<ASSISTANT>"
    )
    full = len(text("plain", "Be brief.")[2])
    s, dropped, ids = text("plain", "Be brief.", budget=full - 1)
    assert dropped == 1 and s.startswith("Be brief.\n\nUser: the cat") and len(ids) < full  # oldest turn first
    assert chat_mod.set_param(SamplingParams(), "/topk", "7").top_k == 7
    with pytest.raises(ValueError, match="top_p"):
        chat_mod.set_param(SamplingParams(), "/topp", "0")


# ---- errors: one line on stderr, exit code 2, no traceback -------------------------------------------------------


def assert_one_line_error(rc, err, match):
    assert rc == 2 and "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("python -m fastllm.generate: error: "), err
    assert re.search(match, lines[0]), lines[0]


def test_errors_in_a_subprocess(checkpoint, tmp_path):
    r = run_cli("--checkpoint", checkpoint, "--prompt", "x", "--top_p", "1.5")  # before torch even loads
    assert_one_line_error(r.returncode, r.stderr, r"--top_p must be in \(0, 1\], got 1.5")
    r = run_cli("--checkpoint", str(tmp_path / "nope.pt"), "--prompt", "x")
    assert_one_line_error(r.returncode, r.stderr, "nope.pt: no such file or directory")


def test_errors_in_process(checkpoint, tmp_path, capsys, monkeypatch):
    junk = tmp_path / "junk.pt"
    torch.save({"foo.weight": torch.zeros(2, 2)}, junk)
    empty_file = tmp_path / "empty.txt"
    empty_file.write_text("\n  \n", encoding="utf-8")
    base = ["--checkpoint", checkpoint, "--prompt", "x"]
    cases = [
        (["--checkpoint", str(junk), "--prompt", "x"], "unknown checkpoint format"),
        (base + ["--temperature", "-1"], "--temperature must be >= 0"),
        (base + ["--top_p", "0"], r"--top_p must be in \(0, 1\]"),
        (base + ["--max_new_tokens", "0"], "--max_new_tokens must be >= 1"),
        (base + ["--top_k", "-1"], "--top_k must be >= 0"),
        (base + ["--repetition_penalty", "0"], "--repetition_penalty must be > 0"),
        (["--checkpoint", checkpoint, "--prompt", "  "], "prompt 1 is empty"),
        (["--checkpoint", checkpoint, "--prompts_file", str(empty_file)], "no prompt"),
        (["--checkpoint", checkpoint, "--prompts_file", str(tmp_path / "missing.txt")], "missing.txt: No such file"),
        (base + ["--device", "nonsense"], "--device nonsense"),
    ]
    if not torch.cuda.is_available():
        cases.append((base + ["--device", "cuda"], "CUDA is not available"))
    for argv, match in cases:
        rc = gen_mod.cli(argv)
        assert_one_line_error(rc, capsys.readouterr().err, match)
    monkeypatch.setattr(gen_mod, "DEFAULT_CHECKPOINT", str(tmp_path / "no-default"))
    rc = gen_mod.cli(["--prompt", "x"])
    assert_one_line_error(rc, capsys.readouterr().err, "bundled default model .* is not installed; pass --checkpoint")
