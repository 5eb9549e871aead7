"""Hugging Face GPT-2 (`GPT2LMHeadModel.save_pretrained`): config.json + model.safetensors or pytorch_model.bin.

Keys `transformer.{wte,wpe}.weight`, `transformer.h.{i}.{ln_1,ln_2}.*`, `.attn.c_attn.*` (packed q|k|v),
`.attn.c_proj.*`, `.mlp.c_fc.*`, `.mlp.c_proj.*`, `transformer.ln_f.*`, optional `lm_head.weight` (omitted when
tied). HF's Conv1D stores weights (in, out): transposed here to nn.Linear's (out, in). OpenAI-style files without the
`transformer.` prefix load too. Old files carry the causal-mask buffers `attn.bias` / `attn.masked_bias`: ignored.
"""

from __future__ import annotations

import os

from fastllm.checkpoints.base import CheckpointError, Mapper, Source, count_layers, has_key, tied_head
from fastllm.models import ModelConfig

FAMILY = "HF GPT-2"
IGNORE = ("*.attn.bias", "*.attn.masked_bias")
# activation_function values of GPT2Config: "gelu_new", "gelu_fast" and "gelu_pytorch_tanh" are the tanh form
ACTIVATIONS = {"gelu_new": "gelu_tanh", "gelu_fast": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu"}


def _prefix(source: Source) -> str:
    return "transformer." if "transformer.wte.weight" in source.tensors else ""


def detect(source: Source) -> bool:
    if source.side_config.get("model_type") == "gpt2":
        return True
    return has_key(source, r"(transformer\.)?h\.\d+\.attn\.c_attn\.weight")


def convert(source: Source):
    hf = {**source.side_config, **source.user_config}
    p = _prefix(source)
    m = Mapper(source, FAMILY, IGNORE)
    wte = m.take(f"{p}wte.weight")
    V, d = wte.shape
    wpe = m.take_table(f"{p}wpe.weight", d)
    L = count_layers(source.tensors, rf"{p}h\.(\d+)\.", source.path)
    n_head = source.need(hf, "n_head", FAMILY, "the head count is not in the weights; config.json normally has it")
    act = hf.get("activation_function", "gelu_new")
    if act not in ACTIVATIONS:
        raise CheckpointError(f"{source.path}: activation_function={act!r} unsupported; expected {sorted(ACTIVATIONS)}")
    if hf.get("scale_attn_by_inverse_layer_idx"):
        raise CheckpointError(f"{source.path}: scale_attn_by_inverse_layer_idx=true is not supported")
    c_fc = source.tensors.get(f"{p}h.0.mlp.c_fc.weight")
    ff = c_fc.shape[1] if c_fc is not None and c_fc.dim() == 2 else 4 * d
    m.put("tok_emb.weight", wte)
    m.put("pos_emb.weight", wpe)
    for i in range(L):
        h, o = f"{p}h.{i}.", f"layers.{i}."
        for src, dst in (("ln_1", "attn_norm"), ("ln_2", "mlp_norm")):
            m.put(f"{o}{dst}.weight", m.take(f"{h}{src}.weight", (d,)))
            m.put(f"{o}{dst}.bias", m.take(f"{h}{src}.bias", (d,)))
        for src, dst, shape in (
            ("attn.c_attn", "attn.wqkv", (d, 3 * d)),
            ("attn.c_proj", "attn.wo", (d, d)),
            ("mlp.c_fc", "mlp.w_in", (d, ff)),
            ("mlp.c_proj", "mlp.w_out", (ff, d)),
        ):
            m.put(f"{o}{dst}.weight", m.take(f"{h}{src}.weight", shape).t().contiguous())
            m.put(f"{o}{dst}.bias", m.take(f"{h}{src}.bias", shape[1:]))
    m.put("norm.weight", m.take(f"{p}ln_f.weight", (d,)))
    m.put("norm.bias", m.take(f"{p}ln_f.bias", (d,)))
    head = m.take_opt("lm_head.weight", (V, d))
    # HF ties unless tie_word_embeddings is false (then a stored head wins even if it differs)
    tie = hf.get("tie_word_embeddings", True) or tied_head(head, wte)
    if not tie:
        m.put("lm_head.weight", m.take("lm_head.weight") if head is None else head)
    config = ModelConfig.from_name(
        "gpt2",
        vocab_size=V,
        n_layer=L,
        d_model=d,
        n_head=n_head,
        d_ff=ff,
        max_seq_len=wpe.shape[0],
        norm_eps=hf.get("layer_norm_epsilon", 1e-5),
        mlp=ACTIVATIONS[act],
        attn_scale=None if hf.get("scale_attn_weights", True) else 1.0,
        tie_embeddings=tie,
    )
    return config, m.finish()


def tokenizer(source: Source):
    from fastllm.tokenizer import Tokenizer

    tok, vocab, merges = (os.path.join(source.dir, f) for f in ("tokenizer.json", "vocab.json", "merges.txt"))
    if os.path.isfile(tok):
        return Tokenizer.from_file(tok)
    if os.path.isfile(vocab) and os.path.isfile(merges):
        return Tokenizer.from_vocab_merges(vocab, merges)
    return Tokenizer.gpt2()  # save_pretrained of the model alone writes no tokenizer; GPT-2's is the one it used
