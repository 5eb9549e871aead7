"""SWA-MLA (Orolol/swamla, model code of 2025-10-14 .. 2025-11-27): hybrid "SWA" / MLA layers, RMSNorm, tied head.

Files:
- `checkpoint_{step}.pt` = `{"model": state_dict, "optimizer": ..., "step": int, "config": vars(args)}`, keys
  usually prefixed `_orig_mod.`; the optimizer state may hold torchao `OptimStateFp8` subclasses, so the file is
  read with the restricted unpickler (`unpickle.py`, the Format sets pickled_extras) and only the weights are kept.
- HF push `hf_upload/checkpoint_tokens_*/`: `pytorch_model.bin` = `{"model_state_dict", "config", "total_tokens",
  "val_loss", ["optimizer_state_dict", "step"]}` + `config.json` = `{"model_type": "swa_mla", ...,
  "training_config"}` + tokenizer files.

Keys (after prefix stripping): `transformer.wte`, `transformer.h.{i}.` SWA layers `norm1, norm2, attn.{q,k,v,o}_proj,
mlp.{gate_up,down}_proj` (+ the junk causal-mask buffer `attn.mask`, whose size is block_size), MLA layers
`attn_norm, ffn_norm, attn.{wq | wq_a, q_norm, wq_b}, attn.{wkv_a, kv_norm, wkv_b, wo}, ffn.{gate_up,down}_proj`,
`transformer.ln_f`, `lm_head` (the wte tensor again, unless the instruct resize untied them: then both are kept).

Dims come from the tensors: the layer kinds, V and C, and, from any MLA layer, R = kv_norm, Dr = wkv_a - R, and
H, Dn, Dv from wq (H (Dn + Dr) rows), wkv_b (H (Dn + Dv)) and wo (H Dv columns). The training-args config gives the
intended window (`swa_window`, keys i - j <= w, so a fastllm window of w + 1) and sinks (`swa_sink_size`), and
`size` the head count when no MLA layer exists. Quirk 1: those checkpoints ran their SWA layers full causal, so they
load as "full"; pass `config={"apply_swa_window": True}` (fastllm's own key) for the intended window + sinks.
Checkpoints of the later architecture (MoE / DeltaNet / Engram, Dec 2025+) are refused.
"""

from __future__ import annotations

import re

import torch

from fastllm.checkpoints.base import CheckpointError, Mapper, Source, count_layers, has_key, tied_head
from fastllm.checkpoints.tokenizers import gpt2_tokenizer
from fastllm.models import ModelConfig

FAMILY = "SWA-MLA"
IGNORE = ("transformer.h.*.attn.mask", "*._extra_state")
HEADS_BY_SIZE = {"small": 16, "base": 16, "large": 16, "xl": 32}  # create_swa_mla_model presets
LATER = re.compile(r"expert|router|deltanet|engram", re.IGNORECASE)
CHATML = {"<|im_start|>": 50257, "<|im_end|>": 50258}  # train_instruct.py; the resize makes V = 50259


def detect(source: Source) -> bool:
    if source.side_config.get("model_type") == "swa_mla":
        return True
    return "transformer.wte.weight" in source.tensors and has_key(
        source, r"transformer\.h\.\d+\.(attn\.(q_proj|wkv_a)\.weight|.*(?i:expert|deltanet|engram).*)"
    )


def _settings(source: Source) -> dict:
    training = source.side_config.get("training_config")
    inside = source.container.get("config")
    return {
        **(training if isinstance(training, dict) else {}),
        **(inside if isinstance(inside, dict) else {}),
        **source.user_config,
    }


def _refuse_later(source: Source, cfg: dict) -> None:
    later = sorted(k for k in source.tensors if LATER.search(k))
    flags = [f for f in ("use_moe", "use_latent_moe", "use_gated_deltanet", "use_engram") if cfg.get(f)]
    if later or flags:
        what = f"tensor {later[0]!r} ({len(later)} such keys)" if later else f"config {flags}"
        raise CheckpointError(
            f"{source.path}: {what} belongs to the later swamla architecture (MoE / DeltaNet / Engram, Dec 2025+), "
            f"which fastllm does not support; only the SWA/MLA hybrid of Oct-Nov 2025 loads"
        )
    if cfg.get("use_dyt"):
        raise CheckpointError(f"{source.path}: use_dyt=true (DynamicTanh norms) is not supported; expected RMSNorm")
    if (cfg.get("logit_scale_base") or 0) > 1:
        raise CheckpointError(f"{source.path}: logit_scale_base={cfg['logit_scale_base']} is not supported")


def _mla_dims(source: Source, i: int) -> dict:
    """MLA dims from the tensors of layer i: R, Dr, q_lora_rank, H, Dn, Dv."""
    t, p = source.tensors, f"transformer.h.{i}.attn."
    R = t[p + "kv_norm.weight"].shape[0] if p + "kv_norm.weight" in t else None
    if R is None or p + "wkv_b.weight" not in t or p + "wo.weight" not in t:
        raise CheckpointError(f"{source.path}: MLA layer {i} lacks kv_norm / wkv_b / wo tensors ({FAMILY} layout)")
    Dr = t[p + "wkv_a.weight"].shape[0] - R
    q_lora = t[p + "wq_a.weight"].shape[0] if p + "wq_a.weight" in t else 0
    wq = t.get(p + ("wq_b.weight" if q_lora else "wq.weight"))
    if wq is None:
        raise CheckpointError(f"{source.path}: MLA layer {i} has neither wq nor wq_a/wq_b ({FAMILY} layout)")
    q_rows, kv_rows, v_cols = wq.shape[0], t[p + "wkv_b.weight"].shape[0], t[p + "wo.weight"].shape[1]
    # q: H (Dn + Dr), wkv_b: H (Dn + Dv), wo: H Dv columns  =>  H Dr = q - wkv_b + wo
    h_dr = q_rows - kv_rows + v_cols
    if Dr <= 0 or h_dr <= 0 or h_dr % Dr or (kv_rows - v_cols) % (h_dr // Dr) or v_cols % (h_dr // Dr):
        raise CheckpointError(
            f"{source.path}: MLA layer {i} shapes are inconsistent: wq rows {q_rows}, wkv_b rows {kv_rows}, wo "
            f"columns {v_cols}, kv_lora_rank {R}, rope dim {Dr}; expected H (Dn + Dr), H (Dn + Dv), H Dv"
        )
    H = h_dr // Dr
    return dict(R=R, Dr=Dr, q_lora=q_lora, H=H, Dn=(kv_rows - v_cols) // H, Dv=v_cols // H)


def _period(kinds: list[str]) -> tuple[str, ...]:
    """The shortest cycle that repeats into `kinds` (("full", "full", "mla") for the 2:1 hybrid)."""
    n = len(kinds)
    p = next(p for p in range(1, n + 1) if all(kinds[i] == kinds[i % p] for i in range(n)))
    return tuple(kinds[:p])


def convert(source: Source):
    cfg = _settings(source)
    _refuse_later(source, cfg)
    t = source.tensors
    L = count_layers(t, r"transformer\.h\.(\d+)\.", source.path)
    kinds = []
    for i in range(L):
        if f"transformer.h.{i}.attn.wkv_a.weight" in t:
            kinds.append("mla")
        elif f"transformer.h.{i}.attn.q_proj.weight" in t:
            kinds.append("swa")
        else:
            raise CheckpointError(f"{source.path}: layer {i} has neither attn.q_proj (SWA) nor attn.wkv_a (MLA)")
    m = Mapper(source, FAMILY, IGNORE)
    wte = m.take("transformer.wte.weight")
    V, C = wte.shape
    mla = _mla_dims(source, kinds.index("mla")) if "mla" in kinds else None
    if mla:
        H = mla["H"]
    else:
        H = cfg.get("n_head") or HEADS_BY_SIZE.get(cfg.get("size"))
        H = source.need({"n_head": H}, "n_head", FAMILY, "no MLA layer to infer it from and no known 'size'")
    if C % H:
        raise CheckpointError(f"{source.path}: {H} heads do not divide n_embd={C}")
    hd = C // H
    n_kv, mask = H, None
    if "swa" in kinds:
        swa0 = kinds.index("swa")
        k_proj = t.get(f"transformer.h.{swa0}.attn.k_proj.weight")
        if k_proj is None:
            raise CheckpointError(f"{source.path}: missing tensor 'transformer.h.{swa0}.attn.k_proj.weight'")
        n_kv = k_proj.shape[0] // hd  # ratio_kv > 1: GQA
        mask = t.get(f"transformer.h.{swa0}.attn.mask")  # (block_size, block_size) causal buffer
    block_size = mask.shape[0] if mask is not None else int(cfg.get("block_size") or 2048)
    ffn = t.get(f"transformer.h.0.{'mlp' if kinds[0] == 'swa' else 'ffn'}.gate_up_proj.weight")
    ff = ffn.shape[0] // 2 if ffn is not None else 4 * C
    m.put("tok_emb.weight", wte)
    for i, kind in enumerate(kinds):
        h, o = f"transformer.h.{i}.", f"layers.{i}."
        norms, mlp = (("norm1", "norm2"), "mlp") if kind == "swa" else (("attn_norm", "ffn_norm"), "ffn")
        m.put(o + "attn_norm.weight", m.take(h + norms[0] + ".weight", (C,)))
        m.put(o + "mlp_norm.weight", m.take(h + norms[1] + ".weight", (C,)))
        m.put(o + "mlp.w_in.weight", m.take(h + mlp + ".gate_up_proj.weight", (2 * ff, C)))
        m.put(o + "mlp.w_out.weight", m.take(h + mlp + ".down_proj.weight", (C, ff)))
        a = h + "attn."
        if kind == "swa":
            shapes = (("q_proj", H * hd), ("k_proj", n_kv * hd), ("v_proj", n_kv * hd))
            m.put(o + "attn.wqkv.weight", torch.cat([m.take(f"{a}{n}.weight", (rows, C)) for n, rows in shapes]))
            m.put(o + "attn.wo.weight", m.take(a + "o_proj.weight", (C, H * hd)))
            continue
        R, Dr, ql, Dn, Dv = mla["R"], mla["Dr"], mla["q_lora"], mla["Dn"], mla["Dv"]
        shapes = {"wkv_a.weight": (R + Dr, C), "kv_norm.weight": (R,), "kv_norm.bias": (R,)}
        shapes |= {"wkv_b.weight": (H * (Dn + Dv), R), "wo.weight": (C, H * Dv)}
        if ql:
            shapes |= {"wq_a.weight": (ql, C), "q_norm.weight": (ql,), "q_norm.bias": (ql,)}
            shapes |= {"wq_b.weight": (H * (Dn + Dr), ql)}
        else:
            shapes |= {"wq.weight": (H * (Dn + Dr), C)}
        for name, shape in shapes.items():
            m.put(o + "attn." + name, m.take(a + name, shape))
    m.put("norm.weight", m.take("transformer.ln_f.weight", (C,)))
    head = m.take_opt("lm_head.weight", (V, C))
    tie = tied_head(head, wte)
    if not tie:
        m.put("lm_head.weight", head)
    sliding = bool(cfg.get("apply_swa_window", False))
    window = int(cfg.get("swa_window", 256)) + 1  # upstream masks i - j > swa_window: w + 1 keys with the token
    overrides = dict(
        vocab_size=V,
        n_layer=L,
        d_model=C,
        n_head=H,
        n_kv_head=n_kv,
        d_ff=ff,
        max_seq_len=block_size,
        rope_theta=float(cfg.get("rope_theta", 10000.0)),
        layer_pattern=_period(["mla" if k == "mla" else ("sliding" if sliding else "full") for k in kinds]),
        window=window,
        sink_tokens=int(cfg.get("swa_sink_size", 4)),
        tie_embeddings=tie,
    )
    if mla:
        overrides |= dict(
            kv_lora_rank=mla["R"],
            q_lora_rank=mla["q_lora"],
            qk_nope_head_dim=mla["Dn"],
            qk_rope_head_dim=mla["Dr"],
            v_head_dim=mla["Dv"],
        )
    preset = "swa-mla-262m-instruct" if V == 50259 else "swa-mla-262m"
    return ModelConfig.from_name(preset, **overrides), m.finish()


def tokenizer(source: Source):
    name = str(_settings(source).get("tokenizer_name") or "gpt2")
    if name.rsplit("/", 1)[-1] != "gpt2":  # upstream reads tokenizer_name from the checkpoint; gpt2 in practice
        return None
    V = source.tensors["transformer.wte.weight"].shape[0]
    return gpt2_tokenizer(source.dir, CHATML if V == 50259 else None)
