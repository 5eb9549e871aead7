"""llm-scratch (Shumatsurontek/gpt_llm): `artifacts/checkpoints/step_N.pt` = `{"model": state_dict, "cfg": dict}`.

Two incompatible model versions share the container:
- v1 (336cd71): learned positions (`pos_emb`) + a learned clipped relative bias `blocks.{i}.attn.rel_bias.bias`
  (2m+1, H) indexed by clamp(i - j, -m, m) + m; GLU `ffn.{fc1 (gate), fc2 (up), proj}`; `lm_head` with bias; the
  final norm is Identity when cfg norm is rmsnorm (no `norm_f` keys).
- v2 (1ddbfa9+): interleaved RoPE (cfg use_rope, default true), packed `ffn.w12` = [value | gate], local window
  (cfg local_window), lm_head without bias; `rel_bias` is built but never applied, so its keys are ignored.
Both: `qkv` (3d, d) rows q | k | v without bias, `proj` with bias, norms with eps 1e-5, head tied to `token_emb`.
Only the causal half (distances 0..m) of a v1 table is ever used; it becomes fastllm's (H, m + 1) rel_bias.
The mask keeps |i - j| <= local_window, i.e. a window of local_window + 1 keys counting the token itself.
"""

from __future__ import annotations

from fastllm.checkpoints.base import CheckpointError, Mapper, Source, count_layers, has_key, tied_head
from fastllm.checkpoints.tokenizers import load_tokenizer_file
from fastllm.models import ModelConfig

FAMILY = "llm-scratch"


def detect(source: Source) -> bool:
    return "token_emb.weight" in source.tensors and has_key(source, r"blocks\.\d+\.attn\.qkv\.weight")


def convert(source: Source):
    cfg = source.container.get("cfg")
    cfg = {**source.side_config, **(cfg if isinstance(cfg, dict) else {}), **source.user_config}
    v2 = has_key(source, r"blocks\.\d+\.ffn\.w12\.weight")
    family = f"{FAMILY} {'v2' if v2 else 'v1'}"
    m = Mapper(source, family, ignore=("blocks.*.attn.rel_bias.bias",) if v2 else ())
    tok = m.take("token_emb.weight")
    V, d = tok.shape
    L = count_layers(source.tensors, r"blocks\.(\d+)\.", source.path)
    table = source.tensors.get("blocks.0.attn.rel_bias.bias")
    n_heads = cfg.get("n_heads") or (table.shape[1] if table is not None and not v2 else None)
    n_heads = source.need({"n_heads": n_heads}, "n_heads", family, "the cfg dict of the checkpoint normally has it")
    if d % n_heads:
        raise CheckpointError(f"{source.path}: n_heads={n_heads} does not divide dim={d}")
    layernorm = "blocks.0.norm1.bias" in source.tensors  # cfg "norm" says the same; the tensors cannot lie
    ffn = source.tensors.get("blocks.0.ffn.w12.weight" if v2 else "blocks.0.ffn.fc1.weight")
    ff = (ffn.shape[0] // (2 if v2 else 1)) if ffn is not None else 4 * d
    m.put("tok_emb.weight", tok)
    if v2:
        max_seq_len = int(cfg.get("max_seq_len") or 2048)
    else:
        pos = m.take_table("pos_emb.weight", d)
        max_seq_len = pos.shape[0]
        m.put("pos_emb.weight", pos)
    R = None
    for i in range(L):
        b, o = f"blocks.{i}.", f"layers.{i}."
        for src, dst in (("norm1", "attn_norm"), ("norm2", "mlp_norm")):
            m.put(f"{o}{dst}.weight", m.take(f"{b}{src}.weight", (d,)))
            if layernorm:
                m.put(f"{o}{dst}.bias", m.take(f"{b}{src}.bias", (d,)))
        m.put(f"{o}attn.wqkv.weight", m.take(f"{b}attn.qkv.weight", (3 * d, d)))
        m.put(f"{o}attn.wqkv.bias", m.take_opt(f"{b}attn.qkv.bias", (3 * d,)))
        m.put(f"{o}attn.wo.weight", m.take(f"{b}attn.proj.weight", (d, d)))
        m.put(f"{o}attn.wo.bias", m.take(f"{b}attn.proj.bias", (d,)))
        if not v2 and table is not None:
            t = m.take(f"{b}attn.rel_bias.bias", tuple(table.shape))
            if t.shape[0] % 2 != 1 or t.shape[1] != n_heads:
                raise CheckpointError(
                    f"{source.path}: tensor '{b}attn.rel_bias.bias' has shape {tuple(t.shape)}, expected "
                    f"(2m+1, n_heads={n_heads})"
                )
            R = t.shape[0] // 2 + 1
            m.put(f"{o}attn.rel_bias", t[R - 1 :].t().contiguous())  # (H, m + 1): distances 0..m
        if v2:
            m.put(f"{o}mlp.w_in.weight", m.take(f"{b}ffn.w12.weight", (2 * ff, d)))
            m.put(f"{o}mlp.w_in.bias", m.take(f"{b}ffn.w12.bias", (2 * ff,)))
        else:
            for src, dst in (("fc1", "w_gate"), ("fc2", "w_up")):
                m.put(f"{o}mlp.{dst}.weight", m.take(f"{b}ffn.{src}.weight", (ff, d)))
                m.put(f"{o}mlp.{dst}.bias", m.take(f"{b}ffn.{src}.bias", (ff,)))
        m.put(f"{o}mlp.w_out.weight", m.take(f"{b}ffn.proj.weight", (d, ff)))
        m.put(f"{o}mlp.w_out.bias", m.take(f"{b}ffn.proj.bias", (d,)))
    final_norm = v2 or layernorm  # v1 + rmsnorm: Identity, no norm_f tensors
    if final_norm:
        m.put("norm.weight", m.take("norm_f.weight", (d,)))
        if layernorm:
            m.put("norm.bias", m.take("norm_f.bias", (d,)))
    head = m.take_opt("lm_head.weight", (V, d))
    tie = tied_head(head, tok)
    if not tie:
        m.put("lm_head.weight", head)
    m.put("lm_head.bias", None if v2 else m.take("lm_head.bias", (V,)))
    lw = cfg.get("local_window") if v2 else None  # v1 passes local_window = max_seq_len: plain causal
    sliding = lw is not None and lw + 1 < max_seq_len
    config = ModelConfig.from_name(
        "llm-scratch-v2" if v2 else "llm-scratch-v1",
        vocab_size=V,
        n_layer=L,
        d_model=d,
        n_head=n_heads,
        d_ff=ff,
        max_seq_len=max_seq_len,
        norm="layernorm" if layernorm else "rmsnorm",
        final_norm=final_norm,
        rel_bias=R or 0,
        qkv_bias="layers.0.attn.wqkv.bias" in m.out,
        tie_embeddings=tie,
        attention="sliding" if sliding else "full",
        window=lw + 1 if sliding else None,
        position=("rope" if cfg.get("use_rope", True) else "none") if v2 else "learned",
    )
    return config, m.finish()


def tokenizer(source: Source):
    path = source.find_file("tokenizer.json", levels=2)  # artifacts/checkpoints/step_N.pt -> artifacts/
    return load_tokenizer_file(path) if path else None
