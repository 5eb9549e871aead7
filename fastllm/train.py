"""Train or fine-tune a fastllm model: `python -m fastllm.train --data FILE ... [--config run.toml]`.

    python -m fastllm.train --data corpus.txt --train_tokenizer --vocab_size 4096 \\
        --preset swa-mla-262m --n_layer 4 --d_model 256 --n_head 4 --max_steps 2000 --out_dir out/run
    torchrun --nproc_per_node=8 -m fastllm.train --config run.toml           # DDP: NCCL on GPUs, gloo on CPU
    torchrun --nproc_per_node=8 -m fastllm.train --config run.toml --parallel fsdp        # FSDP2 (fully_shard)
    torchrun --nnodes=2 --node_rank=0 --master_addr=HOST0 --master_port=29500 --nproc_per_node=8 \\
        -m fastllm.train --config run.toml                                   # then node_rank=1 on the other node

One step = grad_accum micro-batches of batch_size rows per rank, then clip, AdamW, schedule. Every setting is in
`fastllm.training.config.TrainConfig`. Checkpoints (`out_dir/step_*`, `out_dir/best`) load with `fastllm.load`;
a rerun with the same out_dir resumes exactly where the last checkpoint left off (same losses as an uninterrupted
run): the weights, AdamW moments, step, data cursor and RNG states are restored and the schedule is a function of
the step. Only rank 0 writes checkpoints and logs (`out_dir/log.jsonl`: one JSON object per logged step); under
FSDP2 all ranks first gather the full weights and optimizer state, so every checkpoint has the single-process layout
(`fastllm.training.parallel`). Multi-node: out_dir must be on a filesystem all nodes share.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from fastllm.training import data as D
from fastllm.training import parallel as P
from fastllm.training import state as S
from fastllm.training.config import TrainConfig, parse_args

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate of update `step` (0-based): linear warmup to cfg.lr, then cosine down to cfg.min_lr."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps))
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1.0 + math.cos(math.pi * progress))


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: decay on matrices only; norms, biases (incl. bias tables) and embeddings get none. A tied head
    is the embedding (named_parameters lists it once), so it is not decayed."""
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            wd = p.dim() >= 2 and id(p) not in embeddings and not name.endswith("bias")
            (decay if wd else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


# ---- setup ---------------------------------------------------------------------------------------------------------


def _setup_distributed(cfg: TrainConfig) -> tuple[int, int, torch.device]:
    """(rank, world_size, device); under torchrun (WORLD_SIZE set) joins the process group."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    want = cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    if want.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("fastllm.train: --device cuda asked for, but torch sees no CUDA device")
    if world == 1:
        return 0, 1, torch.device(want)
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if want.startswith("cuda"):
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return rank, world, device


def _trained_tokenizer(cfg: TrainConfig, rank: int, world: int):
    """train_bpe on the data, once (rank 0), saved as out_dir/tokenizer.json; a resumed run reuses it."""
    from fastllm.tokenizer import Tokenizer, train_bpe

    saved = os.path.join(cfg.out_dir, "tokenizer.json")
    if rank == 0 and not os.path.isfile(saved):
        tok = train_bpe(D.expand_files(cfg.data), cfg.vocab_size, special_tokens=["<|endoftext|>"])
        tok.save(saved + ".tmp")
        os.replace(saved + ".tmp", saved)
    if world > 1:
        dist.barrier()  # multi-node: out_dir must be on a shared filesystem
    return Tokenizer.from_file(saved)


def _build_model(cfg: TrainConfig, resume_from: str | None, rank: int, world: int):
    """(model on CPU in fp32, tokenizer): the checkpoint to resume, or the one to fine-tune (with its tokenizer
    unless --tokenizer is given), or a preset with overrides and a GPT-2, given or freshly trained tokenizer."""
    import fastllm
    from fastllm.models import ModelConfig, Transformer
    from fastllm.tokenizer import Tokenizer

    given = Tokenizer.from_file(cfg.tokenizer) if cfg.tokenizer and not resume_from else None
    if resume_from or cfg.init_from:
        if cfg.init_from and cfg.train_tokenizer and not resume_from:
            raise ValueError("--train_tokenizer cannot be combined with --init_from (the model has its vocabulary)")
        if cfg.init_from and cfg.model and not resume_from:
            print(f"fastllm.train: --init_from given, model overrides {sorted(cfg.model)} ignored", file=sys.stderr)
        model, tok = fastllm.load(resume_from or cfg.init_from, dtype=torch.float32)
        tok = given or tok
        if tok is None:
            raise ValueError(f"{resume_from or cfg.init_from}: no tokenizer found; pass --tokenizer")
        return model.train(), tok
    tok = _trained_tokenizer(cfg, rank, world) if cfg.train_tokenizer else given or Tokenizer.gpt2()
    overrides = {"vocab_size": tok.vocab_size, "max_seq_len": cfg.seq_len, **cfg.model}
    config = ModelConfig.from_name(cfg.preset, **overrides)
    if config.vocab_size < tok.vocab_size:
        raise ValueError(f"model vocab_size {config.vocab_size} < the tokenizer's {tok.vocab_size}")
    torch.manual_seed(cfg.seed)
    return Transformer(config), tok


# ---- the loop ------------------------------------------------------------------------------------------------------


def _loss(model, x, y) -> torch.Tensor:
    logits = model(x)  # (B, T, V)
    return F.cross_entropy(logits.float().flatten(0, 1), y.flatten())


@torch.no_grad()
def evaluate(model, val: D.PackedRows, cfg: TrainConfig, rank, world, device, autocast) -> float:
    """Mean token loss over the validation rows (all ranks together)."""
    was_training = model.training
    model.eval()
    total = torch.zeros(2, dtype=torch.float64, device=device)  # loss sum, token count
    for idx in D.eval_batches(len(val), cfg.batch_size, rank, world, cfg.eval_batches):
        if idx.numel() == 0:  # this rank has no rows left; a sharded model still needs it in the all-gathers
            if P.is_sharded(model):
                with autocast:
                    model(val.rows(torch.zeros(1, dtype=torch.long))[0].to(device))
            continue
        x, y = (t.to(device) for t in val.rows(idx))
        with autocast:
            total[0] += _loss(model, x, y).double() * y.numel()
        total[1] += y.numel()
    if world > 1:
        dist.all_reduce(total)
    model.train(was_training)
    return (total[0] / total[1]).item() if total[1] > 0 else float("nan")


class _Log:
    """Rank 0's progress lines (stdout) and log.jsonl rows; a resumed run first drops rows after its checkpoint."""

    def __init__(self, out_dir: str, enabled: bool, resumed_step: int | None):
        self.path, self.enabled = os.path.join(out_dir, "log.jsonl"), enabled
        if enabled and resumed_step is not None and os.path.isfile(self.path):
            with open(self.path, encoding="utf-8") as f:
                rows = [r for r in f if r.strip() and json.loads(r)["step"] <= resumed_step]
            with open(self.path + ".tmp", "w", encoding="utf-8") as f:
                f.writelines(rows)
            os.replace(self.path + ".tmp", self.path)

    def row(self, **row) -> None:
        if self.enabled:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")

    def say(self, msg: str) -> None:
        if self.enabled:
            print(msg, flush=True)


def _fmt_time(s: float) -> str:
    return f"{int(s // 3600)}h{int(s % 3600 // 60):02d}m" if s >= 3600 else f"{int(s // 60)}m{int(s % 60):02d}s"


def train(cfg: TrainConfig) -> dict:
    """Runs (or resumes) training as configured; returns {"step", "best_val", "last_val", "checkpoint"}."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    rank, world, device = _setup_distributed(cfg)
    if device.type == "cpu" and cfg.dtype == "float16":
        raise SystemExit("fastllm.train: float16 autocast needs CUDA; use --dtype bfloat16 or float32 on CPU")
    if world > 1 and cfg.parallel == "fsdp" and cfg.dtype == "float16":
        raise SystemExit("fastllm.train: float16 (loss scaling) is not supported with --parallel fsdp; use bfloat16")
    main = rank == 0
    if main:
        os.makedirs(cfg.out_dir, exist_ok=True)
        S.recover(cfg.out_dir)
    if world > 1:
        dist.barrier()
    resume_from = S.latest_checkpoint(cfg.out_dir) if cfg.resume else None
    model, tokenizer = _build_model(cfg, resume_from, rank, world)
    tokens = D.tokenize_files(tokenizer, D.expand_files(cfg.data))
    train_rows, val_rows = D.split(tokens, cfg.seq_len, cfg.val_fraction)
    if tokens.numel() and int(tokens.max()) >= model.config.vocab_size:
        raise ValueError(f"token id {int(tokens.max())} >= the model's vocab_size {model.config.vocab_size}")
    order = D.BatchOrder(len(train_rows), cfg.batch_size, cfg.seed, rank, world)

    model.to(device)
    n_params = model.num_params()
    net = P.parallelize(model, cfg.parallel, world, device)  # fsdp: shards `model` in place, before AdamW sees it
    optimizer = torch.optim.AdamW(
        param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=device.type == "cuda"
    )
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.dtype == "float16")
    step, cursor, best_val, last_val = 0, 0, float("inf"), float("nan")
    if resume_from:
        st = S.load_state(resume_from)
        if st["data_fingerprint"] != D.fingerprint(tokens):
            raise SystemExit(f"{resume_from}: the training data changed since this run began; use a new --out_dir")
        P.load_optimizer_state(model, optimizer, st["optimizer"])
        scaler.load_state_dict(st["scaler"])
        step, cursor, best_val = st["step"], st["cursor"], st["best_val"]
        S.set_rng_state(st["rng"], device)
    log = _Log(cfg.out_dir, main, step if resume_from else None)
    if main:
        with open(os.path.join(cfg.out_dir, "train_config.json"), "w", encoding="utf-8") as f:
            json.dump(cfg.to_dict(), f, indent=2)
    log.say(
        f"fastllm.train: {n_params / 1e6:.2f}M params, {tokens.numel():,} tokens ({len(train_rows)} train rows, "
        f"{len(val_rows)} val rows of {cfg.seq_len}), world {world} on {device}, {cfg.dtype}"
        + (f", {cfg.parallel}" if world > 1 else "")
        + (f", resuming from {resume_from} at step {step}" if resume_from else "")
    )

    step_net = torch.compile(net) if cfg.compile else net
    autocast = torch.autocast(device.type, dtype=DTYPES[cfg.dtype], enabled=cfg.dtype != "float32")
    tokens_per_step = cfg.batch_size * world * cfg.grad_accum * cfg.seq_len
    t_start = t_last = time.perf_counter()
    start_step = steps_at_last = step
    fingerprint = D.fingerprint(tokens)

    def checkpoint(path):
        """Writes a checkpoint (rank 0); every rank calls it, as a sharded model's state is gathered first."""
        weights, optim = P.checkpoint_state(model, optimizer)
        if not main:
            return
        state = {
            "step": step,
            "cursor": cursor,
            "best_val": best_val,
            "optimizer": optim,
            "scaler": scaler.state_dict(),
            "rng": S.rng_state(device),
            "data_fingerprint": fingerprint,
            "world_size": world,
            "config": cfg.to_dict(),
        }
        S.save_checkpoint(path, weights, tokenizer, state)

    model.train()
    while step < cfg.max_steps:
        lr = lr_at(step, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss_sum = torch.zeros((), device=device)
        for micro in range(cfg.grad_accum):
            idx, cursor = order.next(cursor)
            x, y = (t.to(device, non_blocking=True) for t in train_rows.rows(idx))
            sync = micro == cfg.grad_accum - 1  # gradients are averaged over the ranks on the last micro-batch only
            with P.gradient_sync(net, sync), autocast:
                loss = _loss(step_net, x, y)
            scaler.scale(loss / cfg.grad_accum).backward()
            loss_sum += loss.detach()
        scaler.unscale_(optimizer)
        grad_norm = P.clip_grad_norm(model, cfg.grad_clip if cfg.grad_clip > 0 else math.inf)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        _on_step(step)

        if step % cfg.log_interval == 0 or step == cfg.max_steps:
            loss_avg = loss_sum / cfg.grad_accum
            if world > 1:
                dist.all_reduce(loss_avg)  # gloo has no AVG
                loss_avg /= world
            now = time.perf_counter()
            tps = tokens_per_step * (step - steps_at_last) / (now - t_last)
            t_last, steps_at_last = now, step
            eta = (now - t_start) / (step - start_step) * (cfg.max_steps - step)
            log.row(step=step, loss=loss_avg.item(), lr=lr, grad_norm=grad_norm.item(), tokens_per_s=round(tps, 1))
            log.say(
                f"step {step:>6}/{cfg.max_steps} | loss {loss_avg.item():.4f} | lr {lr:.2e} | "
                f"gnorm {grad_norm.item():.2f} | {tps:,.0f} tok/s | {_fmt_time(now - t_start)} elapsed, "
                f"eta {_fmt_time(eta)}"
            )
        if step % cfg.eval_interval == 0 or step == cfg.max_steps:
            last_val = evaluate(model, val_rows, cfg, rank, world, device, autocast)
            if last_val < best_val:
                best_val = last_val
                checkpoint(os.path.join(cfg.out_dir, "best"))
            log.row(step=step, val_loss=last_val)
            log.say(f"step {step:>6} | val loss {last_val:.4f} (best {best_val:.4f})")
        if step % cfg.ckpt_interval == 0 or step == cfg.max_steps:
            checkpoint(S.step_dir(cfg.out_dir, step))
            if main:
                S.prune(cfg.out_dir, cfg.keep_last)

    if main and cfg.export_dir:
        _export(cfg, tokenizer)
    if world > 1:
        dist.barrier()
    return {"step": step, "best_val": best_val, "last_val": last_val, "checkpoint": S.latest_checkpoint(cfg.out_dir)}


def _on_step(step: int) -> None:
    """Called after every optimizer update (a seam for tests that simulate a kill mid-run)."""


def _export(cfg: TrainConfig, tokenizer) -> None:
    """Writes the best checkpoint's weights (or the last one's) to cfg.export_dir in fastllm's format."""
    import fastllm

    best = os.path.join(cfg.out_dir, "best")
    src = best if os.path.isdir(best) else S.latest_checkpoint(cfg.out_dir)
    model, tok = fastllm.load(src, dtype=DTYPES[cfg.export_dtype])
    fastllm.save(model, cfg.export_dir, tokenizer=tok or tokenizer)
    S.usual_permissions(cfg.export_dir)
    print(f"exported {src} to {cfg.export_dir} ({cfg.export_dtype})", flush=True)


def main(argv=None) -> int:
    try:
        cfg = parse_args(argv)
    except (ValueError, TypeError, OSError) as e:
        print(f"fastllm.train: {e}", file=sys.stderr)
        return 2
    try:
        train(cfg)
    except (FileNotFoundError, ValueError) as e:
        print(f"fastllm.train: {e}", file=sys.stderr)
        return 2
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
