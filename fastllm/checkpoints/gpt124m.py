"""GPT-124M / Raschka "LLMs-from-scratch" layout (aurelien2247/llm): the GPT-2 architecture with separate q/k/v.

Files: `gpt-model.pt` / `model.pth` (raw state_dict) or `{"model_state_dict", "optimizer_state_dict"}`. Keys
`tok_emb`, `pos_emb`, `trf_blocks.{i}.att.{W_query,W_key,W_value}` (bias iff qkv_bias), `.att.out_proj`,
`.ff.layers.{0,2}` (tanh GELU between), `.norm{1,2}.{scale,shift}`, `final_norm.*`, `out_head.weight` (untied).
The persistent causal-mask buffers `trf_blocks.{i}.att.mask` are ignored. The head count is not in the file: it
comes from `config={"n_heads": ...}` (GPT_CONFIG_124M's key) or a config.json beside the file using those keys.
"""

from __future__ import annotations

import torch

from fastllm.checkpoints.base import CheckpointError, Mapper, Source, count_layers, has_key, tied_head
from fastllm.models import ModelConfig

FAMILY = "GPT-124M (Raschka layout)"
IGNORE = ("trf_blocks.*.att.mask",)


def detect(source: Source) -> bool:
    return "tok_emb.weight" in source.tensors and has_key(source, r"trf_blocks\.\d+\.att\.W_query\.weight")


def convert(source: Source):
    container_cfg = source.container.get("config")
    cfg = {**source.side_config, **(container_cfg if isinstance(container_cfg, dict) else {}), **source.user_config}
    m = Mapper(source, FAMILY, IGNORE)
    tok = m.take("tok_emb.weight")
    V, d = tok.shape
    pos = m.take_table("pos_emb.weight", d)
    L = count_layers(source.tensors, r"trf_blocks\.(\d+)\.", source.path)
    n_heads = source.need(
        cfg, "n_heads", FAMILY, "GPT_CONFIG_124M['n_heads'] is not inferable from weights: 12 for 124M, 16 for 355M"
    )
    if d % n_heads:
        raise CheckpointError(f"{source.path}: n_heads={n_heads} does not divide emb_dim={d}")
    qkv_bias = "trf_blocks.0.att.W_query.bias" in source.tensors
    ff0 = source.tensors.get("trf_blocks.0.ff.layers.0.weight")
    ff = ff0.shape[0] if ff0 is not None else 4 * d
    m.put("tok_emb.weight", tok)
    m.put("pos_emb.weight", pos)
    for i in range(L):
        b, o = f"trf_blocks.{i}.", f"layers.{i}."
        names = (f"{b}att.W_query", f"{b}att.W_key", f"{b}att.W_value")
        m.put(f"{o}attn.wqkv.weight", torch.cat([m.take(f"{n}.weight", (d, d)) for n in names]))
        if qkv_bias:
            m.put(f"{o}attn.wqkv.bias", torch.cat([m.take(f"{n}.bias", (d,)) for n in names]))
        m.put(f"{o}attn.wo.weight", m.take(f"{b}att.out_proj.weight", (d, d)))
        m.put(f"{o}attn.wo.bias", m.take(f"{b}att.out_proj.bias", (d,)))
        m.put(f"{o}mlp.w_in.weight", m.take(f"{b}ff.layers.0.weight", (ff, d)))
        m.put(f"{o}mlp.w_in.bias", m.take(f"{b}ff.layers.0.bias", (ff,)))
        m.put(f"{o}mlp.w_out.weight", m.take(f"{b}ff.layers.2.weight", (d, ff)))
        m.put(f"{o}mlp.w_out.bias", m.take(f"{b}ff.layers.2.bias", (d,)))
        for src, dst in (("norm1", "attn_norm"), ("norm2", "mlp_norm")):
            m.put(f"{o}{dst}.weight", m.take(f"{b}{src}.scale", (d,)))
            m.put(f"{o}{dst}.bias", m.take(f"{b}{src}.shift", (d,)))
    m.put("norm.weight", m.take("final_norm.scale", (d,)))
    m.put("norm.bias", m.take("final_norm.shift", (d,)))
    head = m.take("out_head.weight", (V, d))
    tie = tied_head(head, tok)  # Raschka's OpenAI import copies wte into out_head: keep one tensor then
    if not tie:
        m.put("lm_head.weight", head)
    config = ModelConfig.from_name(
        "gpt-124m",
        vocab_size=V,
        n_layer=L,
        d_model=d,
        n_head=n_heads,
        d_ff=ff,
        max_seq_len=pos.shape[0],
        qkv_bias=qkv_bias,
        tie_embeddings=tie,
    )
    return config, m.finish()


def tokenizer(source: Source):
    from fastllm.tokenizer import Tokenizer

    return Tokenizer.gpt2()  # tiktoken "gpt2": the same ids
