"""SWA-MLA (Orolol/swamla, Oct-Nov 2025) checkpoints against a reimplementation of the upstream forward from SEEDS.md.

Checkpoints are written in the upstream containers (`checkpoint_{step}.pt` with `_orig_mod.` keys and a pickled
optimizer state holding a torchao-like tensor subclass; the HF-push folder) with random weights away from init. The
reference below runs in fp64 with both quirks: the "SWA" layers full causal (the window mask upstream built and then
discarded) and the MLA query rope rotated by head index. fastllm must match it (fp32 logits, max abs diff <= 1e-5),
decode the same greedy tokens from its caches (full or ring K/V for SWA layers, the latent cache for MLA layers),
and load the intended window + sinks only when asked.
"""

import json
import math
import os
import sys
import types
import zipfile

import pytest
import torch
import torch.nn.functional as F

import fastllm
from fastllm.checkpoints import CheckpointError
from fastllm.checkpoints.unpickle import restricted_load
from fastllm.models import ModelConfig, Transformer
from fastllm.models.transformer import Context

F64 = torch.float64
V, C, H, R, DN, DR, DV, L, CTX = 97, 32, 4, 12, 8, 4, 6, 6, 48
WINDOW, SINKS = 4, 2  # swa_window / swa_sink_size of the test runs: small enough to bite at T = 13


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matmuls: avoid oversubscription stalls on loaded machines
    torch.manual_seed(0)
    yield
    torch.set_num_threads(n)


# ---- upstream weights and files ------------------------------------------------------------------------------------


def is_mla(i):
    return i % 3 == 2  # swa_layers_per_cycle 2, mla_layers_per_cycle 1


def lin(sd, key, out, inp):
    sd[key + ".weight"] = torch.randn(out, inp) / math.sqrt(inp)


def norm(sd, key, n, bias=False):
    sd[key + ".weight"] = 1 + 0.2 * torch.randn(n)
    if bias:
        sd[key + ".bias"] = 0.1 * torch.randn(n)


def swa_mla_state_dict(q_lora=0, n_kv=H, vocab=V, untied=False):
    sd = {"transformer.wte.weight": 0.5 * torch.randn(vocab, C)}
    hd = C // H
    for i in range(L):
        p = f"transformer.h.{i}."
        if not is_mla(i):
            norm(sd, p + "norm1", C)
            norm(sd, p + "norm2", C)
            sd[p + "attn.mask"] = torch.full((CTX, CTX), float("-inf")).triu(1)  # persistent junk buffer
            lin(sd, p + "attn.q_proj", C, C)
            lin(sd, p + "attn.k_proj", n_kv * hd, C)
            lin(sd, p + "attn.v_proj", n_kv * hd, C)
            lin(sd, p + "attn.o_proj", C, C)
            ffn = p + "mlp."
        else:
            norm(sd, p + "attn_norm", C)
            norm(sd, p + "ffn_norm", C)
            if q_lora:
                lin(sd, p + "attn.wq_a", q_lora, C)
                norm(sd, p + "attn.q_norm", q_lora, bias=True)
                lin(sd, p + "attn.wq_b", H * (DN + DR), q_lora)
            else:
                lin(sd, p + "attn.wq", H * (DN + DR), C)
            lin(sd, p + "attn.wkv_a", R + DR, C)
            norm(sd, p + "attn.kv_norm", R, bias=True)
            lin(sd, p + "attn.wkv_b", H * (DN + DV), R)
            lin(sd, p + "attn.wo", C, H * DV)
            ffn = p + "ffn."
        lin(sd, ffn + "gate_up_proj", 8 * C, C)
        lin(sd, ffn + "down_proj", C, 4 * C)
    norm(sd, "transformer.ln_f", C)
    # tied: the same tensor under both names, as torch.save writes a tied state_dict; the instruct resize unties
    sd["lm_head.weight"] = 0.5 * torch.randn(vocab, C) if untied else sd["transformer.wte.weight"]
    return sd


def training_args(q_lora=0):
    return {
        "size": "small", "batch_size": 8, "block_size": CTX, "dropout": 0.0, "swa_layers_per_cycle": 2,
        "mla_layers_per_cycle": 1, "swa_window": WINDOW, "swa_sink_size": SINKS, "mla_q_lora_rank": q_lora,
        "mla_kv_lora_rank": R, "mla_qk_nope_head_dim": DN, "mla_qk_rope_head_dim": DR, "mla_v_head_dim": DV,
        "use_fp8": True, "gradient_checkpointing": True, "tokenizer_name": "openai-community/gpt2",
    }  # fmt: skip


def fake_torchao_class():
    """A tensor subclass importable as torchao.optim.subclass_fp8.OptimStateFp8 while the test saves with it."""
    names = ["torchao", "torchao.optim", "torchao.optim.subclass_fp8"]
    mods = {n: types.ModuleType(n) for n in names}
    cls = type("OptimStateFp8", (torch.Tensor,), {"__module__": names[-1]})
    mods[names[-1]].OptimStateFp8 = cls
    return mods, cls


def save_local_checkpoint(path, sd, args, extra_state=None):
    """checkpoint_{step}.pt: compiled-model keys, an optimizer state holding torchao-like subclasses (unimportable
    once saved) and anything in extra_state."""
    mods, cls = fake_torchao_class()
    sys.modules.update(mods)
    try:
        exp_avg = {i: torch.randn(3).as_subclass(cls) for i in range(2)}
        optimizer = {"state": {0: {"exp_avg": exp_avg[0], "step": torch.tensor(5.0)}}, "param_groups": [{"lr": 1e-3}]}
        obj = {"model": {"_orig_mod." + k: t for k, t in sd.items()}, "optimizer": optimizer, "step": 5000}
        torch.save({**obj, "config": args, **(extra_state or {})}, path)
    finally:
        for n in mods:
            sys.modules.pop(n)


# ---- reference forward (fp64), written from SEEDS.md ---------------------------------------------------------------


def rms(x, w):
    return w * (x / torch.sqrt((x * x).mean(-1, keepdim=True) + 1e-6))


def layer_norm(x, w, b):
    mu = x.mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(((x - mu) ** 2).mean(-1, keepdim=True) + 1e-5) * w + b


def rope_pairs(x, pos):
    """Interleaved rope along dim -2 of x (..., P, D): pair (2i, 2i+1) rotated by pos[p] * 10000^(-2i/D)."""
    D = x.shape[-1]
    ang = pos.to(F64)[:, None] * 10000.0 ** (-torch.arange(0, D, 2, dtype=F64) / D)  # (P, D/2)
    x0, x1 = x[..., 0::2], x[..., 1::2]
    return torch.stack([x0 * ang.cos() - x1 * ang.sin(), x0 * ang.sin() + x1 * ang.cos()], dim=-1).flatten(-2)


def allowed(T, window=None, sinks=0):
    i, j = torch.arange(T)[:, None], torch.arange(T)[None, :]
    ok = j <= i
    return ok if window is None else ok & ((i - j <= window) | (j < sinks))


def softmax_attend(q, k, v, ok, scale):  # (B, H, T, D) each; ok (T, T)
    s = (q @ k.transpose(-1, -2) * scale).masked_fill(~ok, -math.inf)
    return torch.softmax(s, dim=-1) @ v  # (B, H, T, Dv)


def swa_attention(sd, p, x, window):
    B, T, _ = x.shape
    hd = C // H
    q = (x @ sd[p + "q_proj.weight"].T).view(B, T, H, hd).transpose(1, 2)
    k = (x @ sd[p + "k_proj.weight"].T).view(B, T, -1, hd).transpose(1, 2)
    v = (x @ sd[p + "v_proj.weight"].T).view(B, T, -1, hd).transpose(1, 2)
    k, v = k.repeat_interleave(H // k.shape[1], dim=1), v.repeat_interleave(H // v.shape[1], dim=1)
    pos = torch.arange(T)
    ok = allowed(T) if window is None else allowed(T, window, SINKS)
    o = softmax_attend(rope_pairs(q, pos), rope_pairs(k, pos), v, ok, hd**-0.5)
    return o.transpose(1, 2).reshape(B, T, C) @ sd[p + "o_proj.weight"].T


def mla_attention(sd, p, x, rope_by_head=True):
    B, T, _ = x.shape
    if p + "wq.weight" in sd:
        q = x @ sd[p + "wq.weight"].T
    else:
        q_lat = layer_norm(x @ sd[p + "wq_a.weight"].T, sd[p + "q_norm.weight"], sd[p + "q_norm.bias"])
        q = q_lat @ sd[p + "wq_b.weight"].T
    q_nope, q_pe = q.view(B, T, H, DN + DR).split([DN, DR], dim=-1)
    if rope_by_head:  # quirk 2: the (B, T, H, Dr) query goes to a helper rotating along dim -2: by head index h
        q_pe = rope_pairs(q_pe, torch.arange(H))
    else:
        q_pe = rope_pairs(q_pe.transpose(1, 2), torch.arange(T)).transpose(1, 2)
    c, k_pe = (x @ sd[p + "wkv_a.weight"].T).split([R, DR], dim=-1)
    k_pe = rope_pairs(k_pe, torch.arange(T))  # (B, T, Dr): one key per token, by position
    c = layer_norm(c, sd[p + "kv_norm.weight"], sd[p + "kv_norm.bias"])
    wb = sd[p + "wkv_b.weight"].view(H, DN + DV, R)
    k_nope = torch.einsum("btr,hdr->bhtd", c, wb[:, :DN])
    v = torch.einsum("btr,hdr->bhtd", c, wb[:, DN:])
    k = torch.cat([k_nope, k_pe[:, None].expand(B, H, T, DR)], dim=-1)
    qf = torch.cat([q_nope, q_pe], dim=-1).transpose(1, 2)  # (B, H, T, Dn + Dr)
    o = softmax_attend(qf, k, v, allowed(T), (DN + DR) ** -0.5)
    return o.transpose(1, 2).reshape(B, T, H * DV) @ sd[p + "wo.weight"].T


def reference(sd, ids, window=None, rope_by_head=True):
    sd = {k: t.to(F64) for k, t in sd.items()}
    x = sd["transformer.wte.weight"][ids]
    for i in range(L):
        p = f"transformer.h.{i}."
        if is_mla(i):
            x = x + mla_attention(sd, p + "attn.", rms(x, sd[p + "attn_norm.weight"]), rope_by_head)
            h, f = rms(x, sd[p + "ffn_norm.weight"]), p + "ffn."
        else:
            x = x + swa_attention(sd, p + "attn.", rms(x, sd[p + "norm1.weight"]), window)
            h, f = rms(x, sd[p + "norm2.weight"]), p + "mlp."
        val, gate = (h @ sd[f + "gate_up_proj.weight"].T).chunk(2, dim=-1)  # second half is the gate
        x = x + (F.silu(gate) * val) @ sd[f + "down_proj.weight"].T
    return rms(x, sd["transformer.ln_f.weight"]) @ sd["lm_head.weight"].T


# ---- harness -------------------------------------------------------------------------------------------------------


@torch.no_grad()
def check(model, ref, n_new=20, max_chunk=8):
    """Logits vs the reference; greedy: reference full recompute vs fastllm's cache (a prompt of 5, then 1 token)."""
    ids = torch.randint(0, V, (2, 13))
    got, want = model(ids), ref(ids)
    assert got.dtype == torch.float32 and (got.double() - want).abs().max().item() <= 1e-5
    seq = ids[:1, :5]
    for _ in range(n_new):
        seq = torch.cat([seq, ref(seq)[:, -1].argmax(-1, keepdim=True)], dim=1)
    cache = model.new_cache(1, 5 + n_new, max_chunk=max_chunk)
    logits = [model(ids[:1, :5], cache)[:, -1]]
    for t in range(n_new - 1):
        logits.append(model(seq[:, 5 + t : 6 + t], cache)[:, -1])
    logits = torch.stack(logits, dim=1)  # (1, n_new, V): cached decode (latent cache for MLA layers)
    assert logits.argmax(-1).tolist() == seq[:, 5:].tolist()
    torch.testing.assert_close(logits, model(seq[:, :-1])[:, 4:], atol=1e-5, rtol=0)  # == full recompute
    return ids


def test_presets():
    sizes = {"swa-mla-262m": 262_516_736, "swa-mla-262m-instruct": 262_516_736 + 2 * 1024 + 50259 * 1024}
    for name, n in sizes.items():  # SEEDS.md: 262,516,736; instruct: +2 embedding rows and an untied head
        with torch.device("meta"):
            assert Transformer(ModelConfig.from_name(name)).num_params() == n, name
    kinds = ModelConfig.from_name("swa-mla-262m").layer_kinds()
    assert [i for i, k in enumerate(kinds) if k == "mla"] == [2, 5, 8, 11] and kinds.count("full") == 8


@pytest.mark.parametrize("q_lora, n_kv", [(0, H), (10, 2)], ids=["wq", "q_lora-gqa"])
def test_local_checkpoint_matches_reference_with_both_quirks(tmp_path, q_lora, n_kv):
    sd = swa_mla_state_dict(q_lora, n_kv)
    save_local_checkpoint(tmp_path / "checkpoint_5000.pt", sd, training_args(q_lora))
    model, tok = fastllm.load(tmp_path / "checkpoint_5000.pt")
    cfg = model.config
    assert cfg.layer_pattern == ("full", "full", "mla") and cfg.window == WINDOW + 1 and cfg.sink_tokens == SINKS
    assert (cfg.kv_lora_rank, cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.v_head_dim) == (R, DN, DR, DV)
    assert (cfg.q_lora_rank, cfg.n_kv_head, cfg.max_seq_len, cfg.tie_embeddings) == (q_lora, n_kv, CTX, True)
    ids = check(model, lambda ids: reference(sd, ids))
    # quirk 1 is real at these sizes: the intended window would change the logits
    assert (reference(sd, ids, WINDOW) - reference(sd, ids)).abs().max() > 1e-3
    assert tok.encode("Hello world") == [15496, 995] and tok.eot_token == 50256
    fastllm.save(model, tmp_path / "saved", tokenizer=tok)
    again, _ = fastllm.load(tmp_path / "saved")
    assert again.config == cfg and torch.equal(again(ids), model(ids))


def test_intended_window_is_opt_in(tmp_path):
    sd = swa_mla_state_dict()
    save_local_checkpoint(tmp_path / "checkpoint_5000.pt", sd, training_args())
    model, _ = fastllm.load(tmp_path / "checkpoint_5000.pt", config={"apply_swa_window": True})
    assert model.config.layer_kinds()[:3] == ["sliding", "sliding", "mla"]
    # 40 new tokens wrap the SWA rings (window 5 + 2 sinks + 2 - 1 slots) several times
    check(model, lambda ids: reference(sd, ids, WINDOW), n_new=40, max_chunk=2)


def test_query_rope_by_head_index_is_reproduced_and_switchable(tmp_path):
    sd = swa_mla_state_dict()
    save_local_checkpoint(tmp_path / "checkpoint_5000.pt", sd, training_args())
    model, _ = fastllm.load(tmp_path / "checkpoint_5000.pt")
    ids = torch.randint(0, V, (2, 13))
    by_pos = reference(sd, ids, rope_by_head=False)
    assert (by_pos - reference(sd, ids)).abs().max() > 1e-3  # the quirk matters
    for layer in model.layers:  # DeepSeek's intended query rope, for models trained without the bug
        if hasattr(layer.attn, "rope_by_head"):
            layer.attn.rope_by_head = False
    with torch.no_grad():
        assert (model(ids).double() - by_pos).abs().max() <= 1e-5


def test_hf_push_instruct_untied(tmp_path):
    sd = swa_mla_state_dict(vocab=50259, untied=True)
    run = tmp_path / "hf_upload" / "checkpoint_tokens_500M_loss_3.1"
    run.mkdir(parents=True)
    pt = {"model_state_dict": sd, "config": training_args(), "total_tokens": 5e8, "val_loss": 3.1}
    torch.save(pt, run / "pytorch_model.bin")
    side = {"model_type": "swa_mla", "total_tokens": 5e8, "val_loss": 3.1, "training_config": training_args()}
    (run / "config.json").write_text(json.dumps(side))
    model, tok = fastllm.load(run)
    assert not model.config.tie_embeddings and model.config.extra["chat_format"] == "chatml"
    assert not torch.equal(model.lm_head.weight, model.tok_emb.weight)  # both kept (upstream silently re-tied)
    ids = torch.randint(0, 50259, (1, 9))
    with torch.no_grad():
        assert (model(ids).double() - reference(sd, ids)).abs().max() <= 1e-5
    chat = tok.encode("<|im_start|>user\nHi<|im_end|>\n", allowed_special="all")
    assert chat[0] == 50257 and chat[-2:] == [50258, 198] and tok.decode(chat) == "<|im_start|>user\nHi<|im_end|>\n"


def test_rows_of_different_lengths_share_a_latent_cache(tmp_path):
    sd = swa_mla_state_dict()
    save_local_checkpoint(tmp_path / "checkpoint_5000.pt", sd, training_args())
    model, _ = fastllm.load(tmp_path / "checkpoint_5000.pt")
    prompts = [torch.randint(0, V, (1, 4)), torch.randint(0, V, (1, 11))]
    cache = model.new_cache(2, 32, max_chunk=3)
    with torch.no_grad():
        nxt = torch.stack([model(p, cache.row(b))[:, -1] for b, p in enumerate(prompts)]).argmax(-1)  # (2, 1)
        seqs = [p[0].tolist() for p in prompts]
        for _ in range(8):
            for b in range(2):
                seqs[b].append(int(nxt[b]))
            nxt = model(nxt, cache)[:, -1].argmax(-1, keepdim=True)  # each row at its own position
    for b, p in enumerate(prompts):
        seq = p
        for _ in range(8):
            seq = torch.cat([seq, reference(sd, seq)[:, -1].argmax(-1, keepdim=True)], dim=1)
        assert seq[0].tolist() == seqs[b]


@torch.no_grad()
def test_absorbed_decode_equals_decompressed_attention():
    cfg = ModelConfig.from_name(
        "swa-mla-262m", n_layer=3, d_model=C, n_head=H, vocab_size=V, kv_lora_rank=R,
        qk_nope_head_dim=DN, qk_rope_head_dim=DR, v_head_dim=DV, max_seq_len=CTX,
    )  # fmt: skip
    attn = Transformer(cfg).layers[2].attn
    for p in attn.parameters():
        p.add_(0.3 * torch.randn_like(p))  # away from init (0.02-std weights give near-uniform attention)
    x = torch.randn(2, 14, C)
    full = Context(torch.arange(14)[None], None, None, True)
    want = attn(x, full)  # (B, T, C): decompressed K/V through sliding_window_attention
    cache = attn.new_cache(2, CTX, 8, torch.float32, x.device)
    attn(x[:, :9], Context(torch.arange(9)[None], None, None, True), cache)  # prefill fills the latent cache
    got = []
    for t0, t1 in ((9, 10), (10, 14)):  # one token, then a chunk of 4 (causal among themselves)
        lens = torch.tensor([t1, t1], dtype=torch.int32)
        got.append(attn(x[:, t0:t1], Context(torch.arange(t0, t1)[None], None, lens, False), cache))
    torch.testing.assert_close(torch.cat(got, dim=1), want[:, 9:], atol=1e-5, rtol=0)
    c, k_pe = cache.kv[:, :14].split([R, DR], dim=-1)  # the latent rows: LayerNorm'd c, k_pe rotated by position
    torch.testing.assert_close(c, attn.kv_norm(attn.wkv_a(x)[..., :R]), atol=1e-6, rtol=0)


# ---- safety and refusals -------------------------------------------------------------------------------------------


class Evil:
    def __init__(self, fn, arg):
        self.fn, self.arg = fn, arg

    def __reduce__(self):
        return self.fn, (self.arg,)


def test_restricted_unpickler_runs_nothing_and_keeps_the_weights(tmp_path):
    import builtins

    markers = [tmp_path / "pwned_system", tmp_path / "pwned_exec"]
    payload = [Evil(os.system, f"touch {markers[0]}"), Evil(builtins.exec, f"open({str(markers[1])!r}, 'w').close()")]
    sd = swa_mla_state_dict()
    path = tmp_path / "checkpoint_5000.pt"
    save_local_checkpoint(path, sd, training_args(), extra_state={"rng": payload, "scheduler": Evil(print, "x")})
    with zipfile.ZipFile(path) as z:  # the payload is really in the pickle
        data = z.read(next(n for n in z.namelist() if n.endswith("data.pkl")))
    assert b"system" in data and b"exec" in data and b"OptimStateFp8" in data
    with pytest.raises(Exception):
        torch.load(path, weights_only=True)  # torch itself refuses the file
    obj = restricted_load(str(path))
    assert not any(m.exists() for m in markers)
    assert set(obj) == {"model", "optimizer", "step", "config"}  # refused objects scrubbed away
    assert obj["optimizer"]["state"][0].keys() == {"step"} and obj["config"] == training_args()
    assert torch.equal(obj["model"]["_orig_mod.transformer.wte.weight"], sd["transformer.wte.weight"])
    model, _ = fastllm.load(path)
    assert not any(m.exists() for m in markers)
    with torch.no_grad():
        ids = torch.randint(0, V, (1, 7))
        assert (model(ids).double() - reference(sd, ids)).abs().max() <= 1e-5


@pytest.mark.parametrize(
    "key",
    ["transformer.h.2.ffn.experts.0.w1.weight", "transformer.h.0.attn.deltanet.A_log", "transformer.h.2.engram.emb"],
)
def test_later_architecture_is_refused(tmp_path, key):
    sd = {**swa_mla_state_dict(), key: torch.randn(4)}
    torch.save({"model": sd, "step": 1, "config": training_args()}, tmp_path / "checkpoint_1.pt")
    with pytest.raises(CheckpointError) as e:
        fastllm.load(tmp_path / "checkpoint_1.pt")
    assert key in str(e.value) and "MoE / DeltaNet / Engram" in str(e.value) and "checkpoint_1.pt" in str(e.value)


def test_inconsistent_mla_shapes_are_named(tmp_path):
    sd = swa_mla_state_dict()
    sd["transformer.h.5.attn.wkv_b.weight"] = torch.randn(H * (DN + DV), R + 1)
    torch.save({"model": sd, "config": training_args()}, tmp_path / "checkpoint_1.pt")
    with pytest.raises(CheckpointError, match=r"transformer\.h\.5\.attn\.wkv_b\.weight"):
        fastllm.load(tmp_path / "checkpoint_1.pt")


@torch.no_grad()
def test_torch_compile_fullgraph_prefill_and_latent_decode():
    cfg = ModelConfig.from_name(
        "swa-mla-262m", n_layer=3, d_model=C, n_head=H, vocab_size=V, kv_lora_rank=R,
        qk_nope_head_dim=DN, qk_rope_head_dim=DR, v_head_dim=DV, max_seq_len=CTX,
    )  # fmt: skip
    model = Transformer(cfg).eval()
    torch._dynamo.reset()  # the forward's code object carries earlier tests' compiles toward the recompile limit
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    ids = torch.randint(0, V, (2, 9))
    torch.testing.assert_close(compiled(ids), model(ids), atol=1e-6, rtol=0)
    cache, ref = model.new_cache(2, 32, max_chunk=2), model.new_cache(2, 32, max_chunk=2)
    model(ids, cache), model(ids, ref)
    for _ in range(3):  # the decode step (absorbed mla_decode on the latent cache) traces too
        x = torch.randint(0, V, (2, 1))
        torch.testing.assert_close(compiled(x, cache), model(x, ref), atol=1e-6, rtol=0)
