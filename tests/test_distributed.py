"""`python -m fastllm.train` under torchrun (2 gloo processes on CPU): DDP and FSDP2 train like one process with the
same global batch, and checkpoints cross between them: an FSDP2 checkpoint loads with fastllm.load and resumes in one
process, and a one-process checkpoint resumes under FSDP2.

Every run is the tiny SWA-MLA-style model of tests/training_setup.py (sliding + MLA layers, GLU, tied head) on a
generated corpus, one CPU thread per process: 6 steps, global batch 4 (one process: batch 4; two: batch 2 each),
2 micro-batches per step (so the first micro-batch's backward skips the gradient sync).
"""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from training_setup import TINY, make_corpus, read_log

import fastllm
import fastllm.train as T
from fastllm.training import TrainConfig
from fastllm.training import state as S

STEPS = 6
LOSS_TOL = dict(rel=1e-5, abs=1e-6)  # fp32; the ranks' gradients are averaged in another order than one process sums


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_corpus(tmp_path_factory.mktemp("corpus"), lines=300, zipf=False)


def config(corpus, out_dir, world: int, **kw) -> TrainConfig:
    files, tok = corpus
    settings = dict(
        data=files,
        tokenizer=tok,
        preset="swa-mla-262m",
        model=dict(TINY),
        seq_len=24,
        batch_size=4 // world,
        grad_accum=2,
        max_steps=STEPS,
        warmup_steps=2,
        lr=3e-3,
        eval_interval=3,
        eval_batches=0,  # the whole split: 49 rows, so the last global batch leaves rank 1 without a row
        log_interval=1,
        ckpt_interval=2,
        keep_last=3,
        threads=1,
        out_dir=str(out_dir),
    )
    return TrainConfig(**{**settings, **kw})


def torchrun(cfg: TrainConfig, tmp_path) -> str:
    cfg_file = tmp_path / f"{os.path.basename(cfg.out_dir)}.json"
    cfg_file.write_text(json.dumps(cfg.to_dict()))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    proc = subprocess.run(
        [*cmd, "-m", "fastllm.train", "--config", str(cfg_file)],
        env={**os.environ, "OMP_NUM_THREADS": "1", "FASTLLM_KERNELS": "reference"},
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stdout[-1000:] + proc.stderr[-3000:]
    assert proc.stdout.count("fastllm.train:") == 1  # rank 0 alone prints
    return proc.stdout


def assert_same_curves(got_dir, want_dir, steps):
    for key in ("loss", "val_loss"):
        got, want = dict(read_log(got_dir, key)), dict(read_log(want_dir, key))
        assert [s for s in got if s in steps] == [s for s in want if s in steps], key
        for s in want:
            if s in steps:
                assert got[s] == pytest.approx(want[s], **LOSS_TOL), (key, s)


def assert_same_weights(got_dir, want_dir, step):
    a = load_file(os.path.join(S.step_dir(want_dir, step), "model.safetensors"))
    b = load_file(os.path.join(S.step_dir(got_dir, step), "model.safetensors"))
    assert a.keys() == b.keys()
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5


@pytest.fixture(scope="module")
def single(corpus, tmp_path_factory):
    """The reference: one process, batch 4."""
    cfg = config(corpus, tmp_path_factory.mktemp("single") / "run", world=1)
    with pytest.MonkeyPatch.context() as mp:  # module fixtures run before conftest's per-test backend choice
        mp.setenv("FASTLLM_KERNELS", "reference")
        T.train(cfg)
    return cfg.out_dir


@pytest.fixture(scope="module")
def fsdp_run(corpus, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fsdp")
    cfg = config(corpus, tmp / "run", world=2, parallel="fsdp")
    out = torchrun(cfg, tmp)
    assert "world 2 on cpu, float32, fsdp" in out
    return cfg.out_dir


def test_ddp_matches_one_process(corpus, single, tmp_path):
    cfg = config(corpus, tmp_path / "ddp", world=2, parallel="ddp")
    assert "world 2 on cpu, float32, ddp" in torchrun(cfg, tmp_path)
    assert_same_curves(cfg.out_dir, single, range(1, STEPS + 1))
    assert_same_weights(cfg.out_dir, single, STEPS)


def test_fsdp_matches_one_process(fsdp_run, single):
    assert_same_curves(fsdp_run, single, range(1, STEPS + 1))
    assert_same_weights(fsdp_run, single, STEPS)
    a = torch.load(os.path.join(S.step_dir(single, STEPS), S.STATE_FILE), weights_only=True)["optimizer"]
    b = torch.load(os.path.join(S.step_dir(fsdp_run, STEPS), S.STATE_FILE), weights_only=True)["optimizer"]
    assert [g["params"] for g in a["param_groups"]] == [g["params"] for g in b["param_groups"]]  # the same layout
    for i, s in a["state"].items():
        torch.testing.assert_close(b["state"][i]["exp_avg"], s["exp_avg"], atol=1e-6, rtol=1e-4)


def test_fsdp_checkpoint_loads_and_resumes_in_one_process(corpus, fsdp_run, single, tmp_path):
    model, tok = fastllm.load(S.step_dir(fsdp_run, STEPS))  # full weights gathered by rank 0
    want, _ = fastllm.load(S.step_dir(single, STEPS))
    assert model.config == want.config and tok is not None
    assert model.lm_head.weight is model.tok_emb.weight  # the tied head survives the sharded save
    ids = torch.tensor([tok.encode("ba da ka")])
    with torch.no_grad():
        torch.testing.assert_close(model(ids), want(ids), atol=1e-4, rtol=1e-4)

    # cut the FSDP2 run back to its step-4 checkpoint and finish it in one process (batch 4): steps 5, 6 as `single`
    out_dir = tmp_path / "resumed"
    shutil.copytree(fsdp_run, out_dir)
    shutil.rmtree(S.step_dir(out_dir, STEPS))
    out = T.train(config(corpus, out_dir, world=1))
    assert out["step"] == STEPS
    assert_same_curves(out_dir, single, range(1, STEPS + 1))
    assert_same_weights(out_dir, single, STEPS)


def test_one_process_checkpoint_resumes_under_fsdp(corpus, single, tmp_path):
    out_dir = tmp_path / "run"
    shutil.copytree(single, out_dir)
    shutil.rmtree(S.step_dir(out_dir, STEPS))
    out = torchrun(config(corpus, out_dir, world=2, parallel="fsdp"), tmp_path)
    assert f"resuming from {S.step_dir(out_dir, 4)} at step 4" in out
    assert_same_curves(out_dir, single, range(1, STEPS + 1))
    assert_same_weights(out_dir, single, STEPS)
