"""Seed-family checkpoints in their exact on-disk formats against independent reimplementations from SEEDS.md.

Each test writes random weights (scaled to keep activations O(1); norms and biases away from 1 and 0) under the
upstream's own keys, file names and containers, loads them with `fastllm.load`, and checks fp32 logits against a
forward pass written here from the spec in fp64 (max abs diff <= 1e-5), then greedy continuations: the reference
re-runs the full prefix, fastllm decodes with its KV cache. Finally every model round-trips through `fastllm.save`.
"""

import json
import math

import pytest
import torch

import fastllm
from fastllm.checkpoints.tokenizers import L1Tokenizer, WordBPETokenizer

F64 = torch.float64
V, D, H, L, CTX = 97, 32, 4, 2, 40


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matmuls: avoid oversubscription stalls on loaded machines
    torch.manual_seed(0)
    yield
    torch.set_num_threads(n)


# ---- random upstream weights -------------------------------------------------------------------------------------


def lin(sd, key, out, inp, bias=True):
    sd[f"{key}.weight"] = torch.randn(out, inp) / math.sqrt(inp)
    if bias:
        sd[f"{key}.bias"] = 0.1 * torch.randn(out)


def norm(sd, key, w="weight", b="bias"):
    sd[f"{key}.{w}"] = 1 + 0.2 * torch.randn(D)
    if b:
        sd[f"{key}.{b}"] = 0.1 * torch.randn(D)


# ---- reference math, written out -----------------------------------------------------------------------------------


def layer_norm(x, w, b, eps=1e-5):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + eps) * w + b


def rms_norm(x, w, eps=1e-5):
    return x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps) * w


def gelu_tanh(x):
    return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


def gelu_erf(x):
    return 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))


def linear(sd, key, x):
    y = x @ sd[f"{key}.weight"].T
    return y + sd[f"{key}.bias"] if f"{key}.bias" in sd else y


def heads(x):  # (B, T, D) -> (B, H, T, hd)
    B, T, _ = x.shape
    return x.view(B, T, H, D // H).transpose(1, 2)


def attend(q, k, v, allowed, bias=None):
    """softmax(q k^T / sqrt(hd), masked to -inf where not allowed (T, T), then + bias (H, T, T)) v."""
    s = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])  # (B, H, T, T)
    s = s.masked_fill(~allowed, -math.inf)
    if bias is not None:
        s = s + bias
    o = torch.softmax(s, dim=-1) @ v  # (B, H, T, hd)
    return o.transpose(1, 2).reshape(q.shape[0], q.shape[2], D)


def causal(T, window=None):
    i, j = torch.arange(T)[:, None], torch.arange(T)[None, :]
    ok = j <= i
    return ok if window is None else ok & ((i - j).abs() <= window)


def sd64(sd):
    return {k: v.to(F64) if v.is_floating_point() else v for k, v in sd.items()}


# ---- harness -------------------------------------------------------------------------------------------------------


@torch.no_grad()
def check_against_reference(path, ref_forward, *, config=None, n_new=12):
    model, tok = fastllm.load(path, config=config)
    ids = torch.randint(0, V, (2, 13))
    got = model(ids)
    want = ref_forward(ids)
    assert got.dtype == torch.float32
    assert (got.double() - want).abs().max().item() <= 1e-5
    seq = ids[:1, :5]  # reference: full recompute every step; fastllm: the KV cache
    for _ in range(n_new):
        seq = torch.cat([seq, ref_forward(seq)[:, -1].argmax(-1, keepdim=True)], dim=1)
    cache = model.new_cache(1, 5 + n_new)
    out = [model(ids[:1, :5], cache)[:, -1].argmax(-1, keepdim=True)]
    for _ in range(n_new - 1):
        out.append(model(out[-1], cache)[:, -1].argmax(-1, keepdim=True))
    assert torch.cat(out, dim=1).tolist() == seq[:, 5:].tolist()
    return model, tok, ids


def check_roundtrip(model, tok, ids, tmp_path):
    fastllm.save(model, tmp_path / "saved", tokenizer=tok)
    again, tok2 = fastllm.load(tmp_path / "saved")
    assert again.config == model.config
    assert torch.equal(again(ids), model(ids))
    assert type(tok2) is type(tok)


# ---- GPT-124M (Raschka layout) -------------------------------------------------------------------------------------


def gpt124m_state_dict(qkv_bias):
    sd = {"tok_emb.weight": 0.5 * torch.randn(V, D), "pos_emb.weight": 0.5 * torch.randn(CTX, D)}
    for i in range(L):
        p = f"trf_blocks.{i}."
        sd[p + "att.mask"] = torch.triu(torch.ones(CTX, CTX), diagonal=1)  # persistent buffer, junk for loading
        for n in ("W_query", "W_key", "W_value"):
            lin(sd, p + "att." + n, D, D, bias=qkv_bias)
        lin(sd, p + "att.out_proj", D, D)
        lin(sd, p + "ff.layers.0", 4 * D, D)
        lin(sd, p + "ff.layers.2", D, 4 * D)
        norm(sd, p + "norm1", "scale", "shift")
        norm(sd, p + "norm2", "scale", "shift")
    norm(sd, "final_norm", "scale", "shift")
    lin(sd, "out_head", V, D, bias=False)
    return sd


def gpt124m_forward(sd, ids):
    sd = sd64(sd)
    T = ids.shape[1]
    x = sd["tok_emb.weight"][ids] + sd["pos_emb.weight"][:T]
    for i in range(L):
        p = f"trf_blocks.{i}."
        h = layer_norm(x, sd[p + "norm1.scale"], sd[p + "norm1.shift"])
        q, k, v = (heads(linear(sd, p + "att." + n, h)) for n in ("W_query", "W_key", "W_value"))
        x = x + linear(sd, p + "att.out_proj", attend(q, k, v, causal(T)))
        h = layer_norm(x, sd[p + "norm2.scale"], sd[p + "norm2.shift"])
        x = x + linear(sd, p + "ff.layers.2", gelu_tanh(linear(sd, p + "ff.layers.0", h)))
    return linear(sd, "out_head", layer_norm(x, sd["final_norm.scale"], sd["final_norm.shift"]))


@pytest.mark.parametrize("variant", ["raw", "wrapped"])
def test_gpt124m(tmp_path, variant):
    sd = gpt124m_state_dict(qkv_bias=variant == "wrapped")
    if variant == "raw":  # seed commit: gpt-model.pt is the raw state_dict; n_heads comes from config=
        path = tmp_path / "gpt-model.pt"
        torch.save(sd, path)
    else:  # HEAD: {"model_state_dict", "optimizer_state_dict"}, here also compiled (_orig_mod.) under DDP (module.)
        path = tmp_path / "model_and_optimizer.pth"
        torch.save(
            {
                "model_state_dict": {f"module._orig_mod.{k}": t for k, t in sd.items()},
                "optimizer_state_dict": {"state": {}, "param_groups": [{"lr": 4e-4}]},
            },
            path,
        )
    model, tok, ids = check_against_reference(path, lambda ids: gpt124m_forward(sd, ids), config={"n_heads": H})
    assert model.config.qkv_bias == (variant == "wrapped") and not model.config.tie_embeddings
    assert tok.encode("Every effort moves you") == [6109, 3626, 6100, 345]  # tiktoken gpt2
    check_roundtrip(model, tok, ids, tmp_path)


# ---- L1 ------------------------------------------------------------------------------------------------------------


def l1_state_dict():
    sd = {"token_embedding.weight": 0.5 * torch.randn(V, D), "position_embedding.weight": 0.5 * torch.randn(CTX, D)}
    for i in range(L):
        p = f"blocks.{i}."
        for n in ("query", "key", "value", "output"):
            lin(sd, p + "attention." + n, D, D)
        lin(sd, p + "mlp.fc1", 3 * D, D)
        lin(sd, p + "mlp.fc2", D, 3 * D)
        norm(sd, p + "ln1")
        norm(sd, p + "ln2")
    norm(sd, "ln_f")
    lin(sd, "lm_head", V, D, bias=False)
    return sd


def l1_forward(sd, ids):
    sd = sd64(sd)
    T = ids.shape[1]
    x = sd["token_embedding.weight"][ids] + sd["position_embedding.weight"][:T]
    for i in range(L):
        p = f"blocks.{i}."
        h = layer_norm(x, sd[p + "ln1.weight"], sd[p + "ln1.bias"])
        q, k, v = (heads(linear(sd, p + "attention." + n, h)) for n in ("query", "key", "value"))
        x = x + linear(sd, p + "attention.output", attend(q, k, v, causal(T)))
        h = layer_norm(x, sd[p + "ln2.weight"], sd[p + "ln2.bias"])
        x = x + linear(sd, p + "mlp.fc2", gelu_erf(linear(sd, p + "mlp.fc1", h)))
    return linear(sd, "lm_head", layer_norm(x, sd["ln_f.weight"], sd["ln_f.bias"]))


def write_l1_char_tokenizer(path):
    chars = "abcdefghijklmnopqrstuvwxyz .,!?'"
    vocab = {c: 4 + i for i, c in enumerate(chars)}
    specials = {"<pad>": 0, "<unk>": 1, "<bos>": 2, "<eos>": 3}
    path.write_text(json.dumps({"vocab": {**specials, **vocab}, "special_tokens": specials, "vocab_size": 36}))


@pytest.mark.parametrize("variant", ["pytorch_model.bin", "latest_checkpoint.pt"])
def test_l1(tmp_path, variant):
    sd = l1_state_dict()
    run = tmp_path / "models" / "l1-v1"
    run.mkdir(parents=True)
    write_l1_char_tokenizer(run / "tokenizer.json")
    if variant == "pytorch_model.bin":  # raw state_dict + the small config.json written beside it
        torch.save(sd, run / variant)
        cfg = {"vocab_size": V, "max_seq_length": CTX, "n_layers": L, "n_heads": H, "n_embd": D, "n_inner": 3 * D}
        (run / "config.json").write_text(json.dumps(cfg))
    else:  # training checkpoint; config is the whole YAML (max_seq_length there disagrees with the table: shapes win)
        yaml = {"model": {"n_layers": L, "n_heads": H, "n_embd": D, "max_seq_length": 2 * CTX}, "training": {}}
        torch.save(
            {
                "epoch": 1,
                "step": 16000,
                "model_state_dict": sd,
                "optimizer_state_dict": {"state": {}},
                "loss": 2.5,
                "config": yaml,
                "best_loss": 2.4,
            },
            run / variant,
        )
    model, tok, ids = check_against_reference(run, lambda ids: l1_forward(sd, ids))
    assert isinstance(tok, L1Tokenizer) and tok.era == "char" and model.config.max_seq_len == CTX
    assert tok.encode("Hi!") == [2, tok.token_to_id("h"), tok.token_to_id("i"), tok.token_to_id("!")]
    check_roundtrip(model, tok, ids, tmp_path)


# ---- llm-scratch v1 / v2 -------------------------------------------------------------------------------------------


def scratch_state_dict(v2, layernorm, m=128):
    sd = {"token_emb.weight": 0.5 * torch.randn(V, D)}
    if not v2:
        sd["pos_emb.weight"] = 0.5 * torch.randn(CTX, D)
    for i in range(L):
        p = f"blocks.{i}."
        norm(sd, p + "norm1", b="bias" if layernorm else None)
        norm(sd, p + "norm2", b="bias" if layernorm else None)
        lin(sd, p + "attn.qkv", 3 * D, D, bias=False)
        lin(sd, p + "attn.proj", D, D)
        sd[p + "attn.rel_bias.bias"] = torch.randn(2 * m + 1, H)  # v2: built, never applied (must not matter)
        if v2:
            lin(sd, p + "ffn.w12", 8 * D, D)
        else:
            lin(sd, p + "ffn.fc1", 4 * D, D)
            lin(sd, p + "ffn.fc2", 4 * D, D)
        lin(sd, p + "ffn.proj", D, 4 * D)
    if v2 or layernorm:  # v1 with rmsnorm has an Identity final norm: no norm_f tensors
        norm(sd, "norm_f", b="bias" if layernorm else None)
    sd["lm_head.weight"] = sd["token_emb.weight"]  # tied: the same tensor, saved twice as torch.save does
    if not v2:
        sd["lm_head.bias"] = 0.1 * torch.randn(V)
    return sd


def rope_interleaved(x, theta=10000.0):  # x (B, H, T, hd); pairs (2i, 2i+1) rotated by p * theta^(-i / (hd/2))
    hd, T = x.shape[-1], x.shape[-2]
    inv = theta ** (-torch.arange(hd // 2, dtype=F64) / (hd // 2))
    a = torch.arange(T, dtype=F64)[:, None] * inv  # (T, hd/2)
    x0, x1 = x[..., 0::2], x[..., 1::2]
    return torch.stack([x0 * a.cos() - x1 * a.sin(), x0 * a.sin() + x1 * a.cos()], dim=-1).flatten(-2)


def scratch_forward(sd, ids, *, v2, layernorm, local_window=None, max_seq_len=CTX):
    sd = sd64(sd)
    T = ids.shape[1]
    nrm = (
        (lambda x, p: layer_norm(x, sd[p + ".weight"], sd[p + ".bias"]))
        if layernorm
        else (lambda x, p: rms_norm(x, sd[p + ".weight"]))
    )
    x = sd["token_emb.weight"][ids] + (0 if v2 else sd["pos_emb.weight"][:T])
    i_, j_ = torch.arange(T)[:, None], torch.arange(T)[None, :]
    for i in range(L):
        p = f"blocks.{i}."
        q, k, v = linear(sd, p + "attn.qkv", nrm(x, p + "norm1")).view(*ids.shape, 3, H, D // H).unbind(2)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, H, T, hd)
        if v2:
            q, k = rope_interleaved(q), rope_interleaved(k)
            a = attend(q, k, v, causal(T, local_window if local_window is not None else max_seq_len))
        else:
            table = sd[p + "attn.rel_bias.bias"]  # (2m+1, H): B[h, i, j] = table[clamp(i - j, -m, m) + m, h]
            m = table.shape[0] // 2
            a = attend(q, k, v, causal(T, max_seq_len), table[(i_ - j_).clamp(-m, m) + m].permute(2, 0, 1))
        x = x + linear(sd, p + "attn.proj", a)
        h = nrm(x, p + "norm2")
        if v2:
            val, gate = linear(sd, p + "ffn.w12", h).chunk(2, dim=-1)
            x = x + linear(sd, p + "ffn.proj", torch.nn.functional.silu(gate) * val)
        else:
            g = torch.nn.functional.silu(linear(sd, p + "ffn.fc1", h))
            x = x + linear(sd, p + "ffn.proj", g * linear(sd, p + "ffn.fc2", h))
    if v2 or layernorm:
        x = nrm(x, "norm_f")
    return linear(sd, "lm_head", x)


def write_scratch_tokenizer(path):
    chars = ["t", "h", "e</w>", "c", "a", "t</w>", "s", "o", "n</w>"]
    vocab = {"<pad>": 0, "<bos>": 1, "<eos>": 2, "<unk>": 3, **{c: 4 + i for i, c in enumerate(chars)}}
    merges = [["t", "h"], ["th", "e</w>"], ["c", "a"], ["ca", "t</w>"]]
    for a, b in merges:
        vocab[a + b] = len(vocab)
    path.write_text(json.dumps({"vocab": vocab, "merges": merges, "unk_token": "<unk>"}))


@pytest.mark.parametrize(
    "v2, layernorm, m, local_window",
    [(False, True, 128, None), (False, False, 4, None), (True, True, 128, None), (True, False, 128, 4)],
    ids=["v1-layernorm", "v1-rmsnorm-short-table", "v2-layernorm", "v2-rmsnorm-window4"],
)
def test_llm_scratch(tmp_path, v2, layernorm, m, local_window):
    sd = scratch_state_dict(v2, layernorm, m)
    cfg = {
        "vocab_size": V,
        "dim": D,
        "n_layers": L,
        "n_heads": H,
        "max_seq_len": CTX,
        "dropout": 0.1,
        "attn_dropout": 0.1,
        "ffn_mult": 4,
        "norm": "layernorm" if layernorm else "rmsnorm",
        "use_rel_bias": True,
        "tie_weights": True,
    }
    if v2:
        cfg.update(local_window=local_window, use_rope=True)
    art = tmp_path / "artifacts"
    (art / "checkpoints").mkdir(parents=True)
    write_scratch_tokenizer(art / "tokenizer.json")
    torch.save({"model": sd, "cfg": cfg}, art / "checkpoints" / "step_200.pt")

    def ref(ids):
        return scratch_forward(sd, ids, v2=v2, layernorm=layernorm, local_window=local_window)

    model, tok, ids = check_against_reference(art / "checkpoints" / "step_200.pt", ref)
    assert model.config.final_norm == (v2 or layernorm) and model.config.tie_embeddings
    assert model.config.layer_kinds()[0] == ("sliding" if local_window else "full")
    assert isinstance(tok, WordBPETokenizer) and tok.decode(tok.encode("the cat sat")) == "the cat sat"
    check_roundtrip(model, tok, ids, tmp_path)


def test_fixtures_use_the_upstream_key_names():
    # guards the fixtures above: every upstream key name appears as SEEDS.md lists it
    assert {"trf_blocks.0.att.mask", "trf_blocks.1.norm2.shift", "out_head.weight"} <= set(gpt124m_state_dict(False))
    assert {"blocks.1.attention.output.bias", "position_embedding.weight", "ln_f.bias"} <= set(l1_state_dict())
    v1, v2 = scratch_state_dict(False, True), scratch_state_dict(True, False)
    assert {"pos_emb.weight", "blocks.0.ffn.fc2.bias", "lm_head.bias", "norm_f.bias"} <= set(v1)
    assert "blocks.0.ffn.w12.weight" in v2 and "pos_emb.weight" not in v2 and "norm_f.bias" not in v2
