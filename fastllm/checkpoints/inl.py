"""INL-LLM (pacific-prime777/ARKITEKTURE_TRANSFORMER_ADL, `UltraOptimizedIntegratorLanguageModel`).

Files in `checkpoints/inl_1b_model/`: `pytorch_model.pt` (a raw state_dict), `config.json` (`num_heads`,
`num_iterations_per_layer`, `hierarchical_group_size`, `adaptive_convergence_threshold`, ...) and the HF tokenizer
files of GPT-2 + `<USER> <ASSISTANT> <SYSTEM> <ERROR>` (50257..50260).

Keys: `token_embedding.embed_low.weight` (V, r) + `token_embedding.project_up.weight` (d, r) (or
`token_embedding.weight` without the low-rank embedding), `pos_encoding.pe` (1, max_seq_len, d) (a recomputable
sinusoid: checked, then dropped), per layer `norm_attn`, `attention.in_proj_{weight,bias}`, `attention.out_proj`,
`norm1`, `inl.inl.{mu_global, mu_local_offsets, controller.0, controller.2}` (adaptive stopping on) or
`inl.{...}` (off), `norm2`, `ff.0`, `ff.3`; `final_norm`, `lm_head` (untied). Ignored: the dead
`shared_controller.*` copies (top level and under every layer) and the stats buffers `inl.avg_iterations`,
`inl.num_forwards`. V comes from `embed_low` (upstream's own loader used tokenizer.vocab_size = 50257, wrongly).
The head count and the iteration count are not in the weights: config.json or `config=` must give them.
"""

from __future__ import annotations

import torch

from fastllm.checkpoints.base import CheckpointError, Mapper, Source, count_layers, has_key
from fastllm.checkpoints.tokenizers import gpt2_tokenizer
from fastllm.models import ModelConfig
from fastllm.models.layers import sinusoidal_positions

FAMILY = "INL-LLM"
IGNORE = (
    "shared_controller.*",  # constructed and registered upstream, never called
    "layers.*.shared_controller.*",
    "layers.*.inl.avg_iterations",  # early-stopping statistics
    "layers.*.inl.num_forwards",
)
ADDED = {"<USER>": 50257, "<ASSISTANT>": 50258, "<SYSTEM>": 50259, "<ERROR>": 50260}


def detect(source: Source) -> bool:
    return "token_embedding.embed_low.weight" in source.tensors or has_key(source, r"layers\.\d+\.inl\..*")


def convert(source: Source):
    cfg = {**source.side_config, **source.user_config}
    m = Mapper(source, FAMILY, IGNORE)
    if m.has("token_embedding.embed_low.weight"):
        low = m.take("token_embedding.embed_low.weight")
        V, r = low.shape
        up = m.take("token_embedding.project_up.weight")
        if up.dim() != 2 or up.shape[1] != r:
            raise CheckpointError(
                f"{source.path}: tensor 'token_embedding.project_up.weight' has shape {tuple(up.shape)}, expected "
                f"(d_model, {r})"
            )
        d = up.shape[0]
        m.put("tok_emb.weight", low)
        m.put("tok_proj.weight", up)
    else:
        emb = m.take("token_embedding.weight")
        (V, d), r = emb.shape, 0
        m.put("tok_emb.weight", emb)
    L = count_layers(source.tensors, r"layers\.(\d+)\.", source.path)
    heads = source.need(cfg, "num_heads", FAMILY, "not inferable from the weights; config.json normally has it")
    steps = source.need(cfg, "num_iterations_per_layer", FAMILY, "not inferable from the weights")
    if d % heads:
        raise CheckpointError(f"{source.path}: num_heads={heads} does not divide d_model={d}")
    pe = m.take_opt("pos_encoding.pe")
    max_seq_len = pe.shape[1] if pe is not None and pe.dim() == 3 else int(cfg.get("max_seq_len") or 2048)
    if pe is not None:
        _check_pe(source, pe, d)
    adaptive = "layers.0.inl.inl.mu_global" in source.tensors  # the AdaptiveHierarchicalINL wrapper's prefix
    inl = "inl.inl." if adaptive else "inl."
    offsets = source.tensors.get(f"layers.0.{inl}mu_local_offsets")
    group = int(cfg.get("hierarchical_group_size") or 64)
    if offsets is not None and offsets.shape != (-(-d // group),):
        raise CheckpointError(
            f"{source.path}: tensor 'layers.0.{inl}mu_local_offsets' has shape {tuple(offsets.shape)}, expected "
            f"({-(-d // group)},) = ceil(d_model / hierarchical_group_size={group}); pass the group size in config="
        )
    ff0 = source.tensors.get("layers.0.ff.0.weight")
    ff = ff0.shape[0] if ff0 is not None else 4 * d
    for i in range(L):
        b, o = f"layers.{i}.", f"layers.{i}."
        for src, dst in (("norm_attn", "attn_norm"), ("norm1", "inl_norm"), ("norm2", "mlp_norm")):
            m.put(f"{o}{dst}.weight", m.take(f"{b}{src}.weight", (d,)))
            m.put(f"{o}{dst}.bias", m.take(f"{b}{src}.bias", (d,)))
        # nn.MultiheadAttention's packed in_proj rows are q | k | v with heads contiguous: fastllm's wqkv layout
        m.put(f"{o}attn.wqkv.weight", m.take(f"{b}attention.in_proj_weight", (3 * d, d)))
        m.put(f"{o}attn.wqkv.bias", m.take(f"{b}attention.in_proj_bias", (3 * d,)))
        m.put(f"{o}attn.wo.weight", m.take(f"{b}attention.out_proj.weight", (d, d)))
        m.put(f"{o}attn.wo.bias", m.take(f"{b}attention.out_proj.bias", (d,)))
        p = b + inl
        m.put(f"{o}inl.mu_global", m.take(p + "mu_global", ()))
        m.put(f"{o}inl.mu_offsets", m.take(p + "mu_local_offsets", (-(-d // group),)))
        m.put(f"{o}inl.ctrl_in.weight", m.take(p + "controller.0.weight", (64, 3 * d)))
        m.put(f"{o}inl.ctrl_in.bias", m.take(p + "controller.0.bias", (64,)))
        m.put(f"{o}inl.ctrl_out.weight", m.take(p + "controller.2.weight", (3 * d, 64)))
        m.put(f"{o}inl.ctrl_out.bias", m.take(p + "controller.2.bias", (3 * d,)))
        m.put(f"{o}mlp.w_in.weight", m.take(f"{b}ff.0.weight", (ff, d)))
        m.put(f"{o}mlp.w_in.bias", m.take(f"{b}ff.0.bias", (ff,)))
        m.put(f"{o}mlp.w_out.weight", m.take(f"{b}ff.3.weight", (d, ff)))
        m.put(f"{o}mlp.w_out.bias", m.take(f"{b}ff.3.bias", (d,)))
    m.put("norm.weight", m.take("final_norm.weight", (d,)))
    m.put("norm.bias", m.take("final_norm.bias", (d,)))
    m.put("lm_head.weight", m.take("lm_head.weight", (V, d)))
    config = ModelConfig.from_name(
        "inl-1b",
        vocab_size=V,
        n_layer=L,
        d_model=d,
        n_head=heads,
        d_ff=ff,
        max_seq_len=max_seq_len,
        embed_rank=r,
        inl_iterations=int(steps),
        inl_group_size=group,
        inl_early_stop=adaptive,
        inl_stop_threshold=float(cfg.get("adaptive_convergence_threshold") or 1e-3),
    )
    return config, m.finish()


def _check_pe(source: Source, pe: torch.Tensor, d: int) -> None:
    """The stored table must be the sinusoid fastllm recomputes (it is a buffer, never trained)."""
    if pe.dim() != 3 or pe.shape[0] != 1 or pe.shape[2] != d:
        raise CheckpointError(
            f"{source.path}: tensor 'pos_encoding.pe' has shape {tuple(pe.shape)}, expected (1, max_seq_len, {d})"
        )
    want = sinusoidal_positions(torch.arange(pe.shape[1])[None], d)  # (1, S, d)
    err = (pe.float() - want).abs().max().item()
    if err > max(1e-3, 2 * torch.finfo(pe.dtype).eps):  # same fp32 formula upstream; a bf16 copy rounds to 2^-8
        raise CheckpointError(
            f"{source.path}: tensor 'pos_encoding.pe' differs from the sinusoidal table by {err:.3g}; expected "
            f"pe[p, 2i] = sin(p / 10000^(2i/d)), pe[p, 2i+1] = cos(...)"
        )


def tokenizer(source: Source):
    emb = source.tensors.get("token_embedding.embed_low.weight", source.tensors.get("token_embedding.weight"))
    return gpt2_tokenizer(source.dir, {t: i for t, i in ADDED.items() if i < emb.shape[0]})
