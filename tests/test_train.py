"""The trainer (`python -m fastllm.train`): schedule, decay groups, config files, data order, exact resume after a
kill, atomic checkpoints that fastllm.load reads, DDP on 2 gloo processes against one process, bf16 autocast.

Every run is a tiny SWA-MLA-style model (sliding + MLA layers, GLU) on a generated corpus, one CPU thread.
"""

import json
import math
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from training_setup import TINY, make_corpus, read_log

import fastllm
import fastllm.train as T
from fastllm.training import TrainConfig, parse_args
from fastllm.training import data as D
from fastllm.training import state as S

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_corpus(tmp_path_factory.mktemp("corpus"), lines=400, zipf=True)


def tiny(corpus, out_dir, **kw) -> TrainConfig:
    files, tok = corpus
    settings = dict(
        data=files,
        tokenizer=tok,
        preset="swa-mla-262m",
        model=dict(TINY),
        seq_len=24,
        batch_size=4,
        max_steps=8,
        warmup_steps=2,
        lr=3e-3,
        eval_interval=4,
        eval_batches=2,
        log_interval=1,
        ckpt_interval=2,
        keep_last=2,
        threads=1,
        out_dir=str(out_dir),
    )
    return TrainConfig(**{**settings, **kw})


# ---- pieces --------------------------------------------------------------------------------------------------------


def test_lr_schedule():
    cfg = TrainConfig(lr=1.0, min_lr=0.1, warmup_steps=10, max_steps=110)
    assert T.lr_at(0, cfg) == pytest.approx(0.1) and T.lr_at(9, cfg) == pytest.approx(1.0)
    assert T.lr_at(60, cfg) == pytest.approx(0.55)  # half way down the cosine
    assert T.lr_at(110, cfg) == pytest.approx(0.1) and T.lr_at(500, cfg) == pytest.approx(0.1)
    lrs = [T.lr_at(s, cfg) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))


@pytest.mark.parametrize("tie", [True, False])
def test_param_groups_skip_norms_biases_embeddings(tie):
    model = fastllm.Transformer(
        fastllm.ModelConfig.from_name(
            "gpt2", n_layer=1, d_model=16, n_head=2, vocab_size=50, max_seq_len=8, tie_embeddings=tie
        )
    )
    decay, no_decay = T.param_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert "layers.0.attn.wqkv.weight" in decayed and "layers.0.mlp.w_out.weight" in decayed
    assert not any(n.endswith("bias") or "norm" in n or "emb" in n for n in decayed)
    assert ("lm_head.weight" in decayed) == (not tie)  # a tied head is the embedding
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_config_file_flags_and_precedence(tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text('data = ["a.txt"]\nlr = 1e-3\nn_layer = 2\n[model]\nwindow = 5\nlayer_pattern = ["sliding"]\n')
    js = tmp_path / "run.json"
    js.write_text(json.dumps({"data": ["a.txt"], "lr": 1e-3, "n_layer": 2, "window": 5, "layer_pattern": ["sliding"]}))
    flags = ["--data", "a.txt", "--lr", "1e-3", "--n_layer", "2", "--window", "5", "--layer_pattern", "sliding"]
    a, b, c = parse_args(["--config", str(toml)]), parse_args(["--config", str(js)]), parse_args(flags)
    assert a == b == c
    assert a.model == {"n_layer": 2, "window": 5, "layer_pattern": ["sliding"]} and a.min_lr == pytest.approx(1e-4)
    d = parse_args(["--config", str(toml), "--lr", "5e-4", "--n_layer", "3", "--train_tokenizer", "--resume", "no"])
    assert d.lr == 5e-4 and d.model["n_layer"] == 3 and d.model["window"] == 5 and d.train_tokenizer and not d.resume
    js.write_text(json.dumps({"data": ["a.txt"], "learning_rate": 1e-3}))
    with pytest.raises(ValueError, match="learning_rate"):
        parse_args(["--config", str(js)])


def test_tokenize_chunks_packing_and_batch_order(corpus, monkeypatch):
    files, tok_path = corpus
    tok = fastllm.Tokenizer.from_file(tok_path)
    whole = D.tokenize_files(tok, files)
    monkeypatch.setattr(D, "_CHUNK_CHARS", 100)  # many cuts: still the ids of encoding each file whole
    assert torch.equal(D.tokenize_files(tok, files), whole)
    expected = [t for f in files for t in tok.encode_ordinary(open(f, encoding="utf-8").read()) + [tok.eot_token]]
    assert whole.tolist() == expected

    train, val = D.split(whole, 24, 0.1)
    x, y = train.rows(torch.tensor([0, 3]))
    assert torch.equal(x[1], whole[72:96].long()) and torch.equal(y[1], whole[73:97].long())
    assert len(train) * 24 < whole.numel() * 0.9 + 1 and len(val) >= 1
    vx, _ = val.rows(torch.tensor([0]))
    assert torch.equal(vx[0], whole[whole.numel() - max(int(whole.numel() * 0.1), 25) :][:24].long())

    one = D.BatchOrder(10, 4, seed=3)
    two = [D.BatchOrder(10, 2, seed=3, rank=r, world_size=2) for r in range(2)]
    cur1 = cur2 = 0
    seen = []
    for _ in range(5):  # 20 rows: two epochs, each a permutation of the 10 rows
        idx, cur1 = one.next(cur1)
        parts = [o.next(cur2) for o in two]
        cur2 = parts[0][1]
        assert torch.equal(idx, torch.cat([p[0] for p in parts])) and cur1 == cur2
        seen += idx.tolist()
    assert sorted(seen[:10]) == list(range(10)) == sorted(seen[10:]) and seen[:10] != seen[10:]


# ---- runs ----------------------------------------------------------------------------------------------------------


class Killed(Exception):
    pass


def test_exact_resume_after_kill(corpus, tmp_path, monkeypatch):
    full = tiny(corpus, tmp_path / "full")
    T.train(full)

    cut = tiny(corpus, tmp_path / "cut")

    def kill_after_5(step):
        if step == 5:  # between the checkpoints at 4 and 6: step 5's progress is lost
            raise Killed

    monkeypatch.setattr(T, "_on_step", kill_after_5)
    with pytest.raises(Killed):
        T.train(cut)
    assert [s for s, _ in S.step_checkpoints(cut.out_dir)] == [2, 4]
    monkeypatch.setattr(T, "_on_step", lambda step: None)  # not undo(): that would also reset FASTLLM_KERNELS
    out = T.train(cut)  # same command again: resumes from step_0000004

    assert out["step"] == 8
    assert read_log(cut.out_dir) == read_log(full.out_dir)  # losses equal exactly, steps 1..8 once each
    assert read_log(cut.out_dir, "val_loss") == read_log(full.out_dir, "val_loss")
    a = load_file(os.path.join(S.step_dir(full.out_dir, 8), "model.safetensors"))
    b = load_file(os.path.join(S.step_dir(cut.out_dir, 8), "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_checkpoints_load_prune_and_survive_a_failed_write(corpus, tmp_path, monkeypatch):
    cfg = tiny(corpus, tmp_path / "run", max_steps=6)
    T.train(cfg)
    assert [s for s, _ in S.step_checkpoints(cfg.out_dir)] == [4, 6]  # keep_last=2
    assert sorted(os.listdir(cfg.out_dir)) == ["best", "log.jsonl", "step_0000004", "step_0000006", "train_config.json"]
    path = S.step_dir(cfg.out_dir, 6)
    model, tok = fastllm.load(path)
    assert model.config.layer_kinds() == ["sliding", "sliding", "mla"] and model.config.window == 8
    assert tok is not None and tok.encode("the lord") == fastllm.Tokenizer.from_file(cfg.tokenizer).encode("the lord")
    state = torch.load(os.path.join(path, S.STATE_FILE), weights_only=True)
    assert state["step"] == 6 and state["cursor"] == 6 * 4 and "exp_avg" in state["optimizer"]["state"][0]
    ids = torch.tensor([tok.encode("the lord said unto moses")])
    with torch.no_grad():
        loss = torch.nn.functional.cross_entropy(model(ids[:, :-1])[0], ids[0, 1:])
    assert math.isfinite(loss.item())

    before = load_file(os.path.join(path, "model.safetensors"))

    def torch_save_dies(*a, **k):
        raise Killed

    real_save = S.torch.save
    monkeypatch.setattr(S.torch, "save", torch_save_dies)  # the trainer dies while writing `best` / a step
    with pytest.raises(Killed):
        S.save_checkpoint(path, model, tok, {"step": 99})
    monkeypatch.setattr(S.torch, "save", real_save)
    after = load_file(os.path.join(path, "model.safetensors"))
    assert all(torch.equal(before[k], after[k]) for k in before) and S.load_state(path)["step"] == 6
    assert not [n for n in os.listdir(cfg.out_dir) if n.startswith(".")]

    os.replace(path, path + ".old")  # killed between moving the old directory aside and renaming the new one in
    S.recover(cfg.out_dir)
    assert S.latest_checkpoint(cfg.out_dir) == path


def test_cli_train_tokenizer_then_finetune(corpus, tmp_path):
    files, _ = corpus
    base = tmp_path / "base"
    flags = ["--data", ",".join(files), "--train_tokenizer", "--vocab_size", "300", "--preset", "swa-mla-262m"]
    flags += [f"--{k}={','.join(v) if isinstance(v, list) else v}" for k, v in TINY.items()]
    flags += ["--seq_len", "16", "--max_steps", "3", "--warmup_steps", "1", "--lr", "1e-2", "--eval_interval", "3"]
    flags += ["--threads", "1", "--out_dir", str(base)]
    assert T.main(flags) == 0
    tok = fastllm.Tokenizer.from_file(str(base / "tokenizer.json"))
    assert tok.vocab_size == 300 and tok.eot_token == 299
    model, saved_tok = fastllm.load(str(base / "step_0000003"))
    assert model.config.vocab_size == 300 and saved_tok.vocab_size == 300

    tuned = tiny(
        (files, None),
        tmp_path / "tuned",
        tokenizer=None,
        model={},
        init_from=str(base / "step_0000003"),
        seq_len=16,
        max_steps=2,
        lr=1e-4,
    )
    T.train(tuned)
    first = read_log(tuned.out_dir)[0][1]
    assert first < 5.0 < math.log(300)  # starts from the trained weights, not from scratch (log V = 5.7)
    assert fastllm.load(str(tmp_path / "tuned" / "step_0000002"))[0].config == model.config

    assert T.main(["--data", str(tmp_path / "missing.txt"), "--out_dir", str(tmp_path / "x")]) == 2


def test_bf16_autocast_and_export(corpus, tmp_path):
    cfg = tiny(
        corpus,
        tmp_path / "bf16",
        dtype="bfloat16",
        max_steps=3,
        export_dir=str(tmp_path / "export"),
        export_dtype="bfloat16",
    )
    out = T.train(cfg)
    losses = [loss for _, loss in read_log(cfg.out_dir)]
    assert len(losses) == 3 and all(math.isfinite(v) for v in losses) and math.isfinite(out["best_val"])
    model, tok = fastllm.load(str(tmp_path / "export"))
    assert model.tok_emb.weight.dtype == torch.bfloat16 and tok is not None
    assert not os.path.exists(tmp_path / "export" / S.STATE_FILE)


def test_ddp_two_gloo_processes_match_one(corpus, tmp_path):
    """torchrun, 2 CPU processes of batch 2 with grad_accum 2 (no_sync on the first micro-batch) == 1 of batch 4."""
    single = tiny(corpus, tmp_path / "single", batch_size=4, grad_accum=2, max_steps=4, ckpt_interval=4)
    T.train(single)
    ddp = tiny(corpus, tmp_path / "ddp", batch_size=2, grad_accum=2, max_steps=4, ckpt_interval=4)
    cfg_file = tmp_path / "ddp.json"
    cfg_file.write_text(json.dumps(ddp.to_dict()))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    proc = subprocess.run(
        [*cmd, "-m", "fastllm.train", "--config", str(cfg_file)], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "world 2 on cpu" in proc.stdout and proc.stdout.count("fastllm.train:") == 1  # rank 0 prints
    one, two = read_log(single.out_dir), read_log(ddp.out_dir)
    assert [s for s, _ in one] == [s for s, _ in two] == [1, 2, 3, 4]
    for (_, a), (_, b) in zip(one, two):
        assert b == pytest.approx(a, rel=1e-5, abs=1e-6)
    assert read_log(ddp.out_dir, "val_loss")[0][1] == pytest.approx(
        read_log(single.out_dir, "val_loss")[0][1], rel=1e-5
    )
    a = load_file(os.path.join(S.step_dir(single.out_dir, 4), "model.safetensors"))
    b = load_file(os.path.join(S.step_dir(ddp.out_dir, 4), "model.safetensors"))
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5
