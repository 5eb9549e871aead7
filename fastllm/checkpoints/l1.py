"""L1 (juliuspleunes4/L1): a GPT-2-like pre-LN decoder with separate q/k/v/output projections and erf GELU.

Files in `models/<run>/`: `latest_checkpoint.pt` / `best_checkpoint.pt` / `checkpoint_epoch_E_step_S.pt`
(`{"epoch", "step", "model_state_dict", "optimizer_state_dict", "loss", "config", "best_loss"}`, where `config` is
the whole training YAML with a `model:` section) and, from 2025-07-21, `pytorch_model.bin` (raw state_dict) +
`config.json` (`vocab_size, max_seq_length, n_layers, n_heads, n_embd, n_inner`), plus `tokenizer.json`.
Shapes win over configs (the YAML may say max_seq_length 2048 for a 1024-row table); `n_heads` must come from
config= , config.json or the YAML.
"""

from __future__ import annotations

import torch

from fastllm.checkpoints.base import CheckpointError, Mapper, Source, count_layers, has_key, tied_head
from fastllm.checkpoints.tokenizers import load_tokenizer_file
from fastllm.models import ModelConfig

FAMILY = "L1"


def detect(source: Source) -> bool:
    return "token_embedding.weight" in source.tensors and has_key(source, r"blocks\.\d+\.attention\.query\.weight")


def _settings(source: Source) -> dict:
    yaml = source.container.get("config")
    model_section = yaml.get("model") if isinstance(yaml, dict) else None
    return {**(model_section if isinstance(model_section, dict) else {}), **source.side_config, **source.user_config}


def convert(source: Source):
    cfg = _settings(source)
    m = Mapper(source, FAMILY)
    tok = m.take("token_embedding.weight")
    V, d = tok.shape
    pos = m.take_table("position_embedding.weight", d)
    L = count_layers(source.tensors, r"blocks\.(\d+)\.", source.path)
    n_heads = source.need(cfg, "n_heads", FAMILY, "not inferable from weights; config.json or the YAML has it")
    if d % n_heads:
        raise CheckpointError(f"{source.path}: n_heads={n_heads} does not divide n_embd={d}")
    fc1 = source.tensors.get("blocks.0.mlp.fc1.weight")
    ff = fc1.shape[0] if fc1 is not None else 4 * d
    m.put("tok_emb.weight", tok)
    m.put("pos_emb.weight", pos)
    for i in range(L):
        b, o = f"blocks.{i}.", f"layers.{i}."
        names = [f"{b}attention.{n}" for n in ("query", "key", "value")]
        m.put(f"{o}attn.wqkv.weight", torch.cat([m.take(f"{n}.weight", (d, d)) for n in names]))
        m.put(f"{o}attn.wqkv.bias", torch.cat([m.take(f"{n}.bias", (d,)) for n in names]))
        m.put(f"{o}attn.wo.weight", m.take(f"{b}attention.output.weight", (d, d)))
        m.put(f"{o}attn.wo.bias", m.take(f"{b}attention.output.bias", (d,)))
        m.put(f"{o}mlp.w_in.weight", m.take(f"{b}mlp.fc1.weight", (ff, d)))
        m.put(f"{o}mlp.w_in.bias", m.take(f"{b}mlp.fc1.bias", (ff,)))
        m.put(f"{o}mlp.w_out.weight", m.take(f"{b}mlp.fc2.weight", (d, ff)))
        m.put(f"{o}mlp.w_out.bias", m.take(f"{b}mlp.fc2.bias", (d,)))
        for src, dst in (("ln1", "attn_norm"), ("ln2", "mlp_norm")):
            m.put(f"{o}{dst}.weight", m.take(f"{b}{src}.weight", (d,)))
            m.put(f"{o}{dst}.bias", m.take(f"{b}{src}.bias", (d,)))
    m.put("norm.weight", m.take("ln_f.weight", (d,)))
    m.put("norm.bias", m.take("ln_f.bias", (d,)))
    head = m.take("lm_head.weight", (V, d))
    tie = tied_head(head, tok)
    if not tie:
        m.put("lm_head.weight", head)
    config = ModelConfig.from_name(
        "l1",
        vocab_size=V,
        n_layer=L,
        d_model=d,
        n_head=n_heads,
        d_ff=ff,
        max_seq_len=pos.shape[0],
        norm_eps=cfg.get("layer_norm_epsilon", 1e-5),
        tie_embeddings=tie,
    )
    return config, m.finish()


def tokenizer(source: Source):
    path = source.find_file("tokenizer.json", levels=1)
    return load_tokenizer_file(path) if path else None
