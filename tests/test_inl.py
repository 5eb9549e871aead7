"""INL-LLM checkpoints (raw state_dict `pytorch_model.pt` + config.json) against a reimplementation from SEEDS.md.

The reference runs the upstream forward in fp64: low-rank embedding + the stored sinusoid, pre-norm blocks with
nn.MultiheadAttention-style packed projections, the integrator loop (controller [ctx, s, v] -> 64 -> [a, b, g],
hierarchical mu, dt 0.1, the final state added to the stream) with upstream's eval-mode early stop (from step 3 on,
a token whose state moved by < 1e-3 is marked converged for good; all marked: stop), erf-GELU FFN, final LayerNorm,
untied head. Weights are random and away from init; the early-stop tests construct controllers where it fires.
"""

import json
import math
import os

import pytest
import torch
import torch.nn.functional as F

import fastllm
from fastllm.checkpoints import CheckpointError
from fastllm.models import ModelConfig, Transformer
from fastllm.models.inl import Integrator
from fastllm.tokenizer import ASSETS

F64 = torch.float64
V, D, H, L, FF, RK, G, STEPS, CTX = 97, 32, 4, 2, 48, 8, 16, 6, 40
ADDED = ["<USER>", "<ASSISTANT>", "<SYSTEM>", "<ERROR>"]


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matmuls: avoid oversubscription stalls on loaded machines
    torch.manual_seed(0)
    yield
    torch.set_num_threads(n)


# ---- upstream files ------------------------------------------------------------------------------------------------


def lin(sd, key, out, inp, bias=True):
    sd[key + ".weight"] = torch.randn(out, inp) / math.sqrt(inp)
    if bias:
        sd[key + ".bias"] = 0.1 * torch.randn(out)


def norm(sd, key, n=D):
    sd[key + ".weight"], sd[key + ".bias"] = 1 + 0.2 * torch.randn(n), 0.1 * torch.randn(n)


def sinusoid(n, d):  # PositionalEncoding's buffer, (1, n, d) fp32
    pe = torch.zeros(n, d)
    pos = torch.arange(n, dtype=torch.float32)[:, None]
    div = torch.exp(torch.arange(0, d, 2).float() * (-math.log(10000.0) / d))
    pe[:, 0::2], pe[:, 1::2] = torch.sin(pos * div), torch.cos(pos * div)
    return pe[None]


def inl_state_dict(adaptive=True, lowrank=True, shared=True, vocab=V):
    sd = {}
    if lowrank:
        sd["token_embedding.embed_low.weight"] = 0.5 * torch.randn(vocab, RK)
        lin(sd, "token_embedding.project_up", D, RK, bias=False)
    else:
        sd["token_embedding.weight"] = 0.5 * torch.randn(vocab, D)
    sd["pos_encoding.pe"] = sinusoid(CTX, D)
    dead = {}
    if shared:  # SharedController: registered, never called
        for n in ("controller_h", "controller_x", "controller_v"):
            lin(dead, f"shared_controller.{n}", 64, D)
        lin(dead, "shared_controller.controller_mlp.1", 4 * D, 64)
        dead["shared_controller.layer_scalers"], dead["shared_controller.layer_biases"] = (
            torch.ones(L, 4),
            torch.zeros(L, 4),
        )
        sd.update(dead)
    for i in range(L):
        p = f"layers.{i}."
        sd.update({p + k: t for k, t in dead.items()})  # the same module again under every block
        for n in ("norm1", "norm2", "norm_attn"):
            norm(sd, p + n)
        sd[p + "attention.in_proj_weight"] = torch.randn(3 * D, D) / math.sqrt(D)
        sd[p + "attention.in_proj_bias"] = 0.1 * torch.randn(3 * D)
        lin(sd, p + "attention.out_proj", D, D)
        q = p + ("inl.inl." if adaptive else "inl.")
        if adaptive:
            sd[p + "inl.avg_iterations"], sd[p + "inl.num_forwards"] = torch.tensor(6.5), torch.tensor(12)
        sd[q + "mu_global"] = torch.tensor(0.3)
        sd[q + "mu_local_offsets"] = 0.2 * torch.randn(-(-D // G))
        lin(sd, q + "controller.0", 64, 3 * D)
        lin(sd, q + "controller.2", 3 * D, 64)
        lin(sd, p + "ff.0", FF, D)
        lin(sd, p + "ff.3", D, FF)
    norm(sd, "final_norm")
    lin(sd, "lm_head", vocab, D, bias=False)
    return sd


def write_run(tmp_path, sd, adaptive=True, lowrank=True, shared=True, **cfg):
    run = tmp_path / "checkpoints" / "inl_1b_model"
    run.mkdir(parents=True, exist_ok=True)
    torch.save(sd, run / "pytorch_model.pt")
    config = {
        "architectures": ["UltraOptimizedIntegratorLanguageModel"], "model_type": "inl-llm", "vocab_size": V,
        "d_model": D, "num_layers": L, "num_heads": H, "num_iterations_per_layer": STEPS, "feedforward_dim": FF,
        "max_seq_len": CTX, "dropout": 0.1, "bos_token_id": 50256, "eos_token_id": 50256, "pad_token_id": 50256,
        "unk_token_id": 50256, "use_lowrank_embeddings": lowrank, "lowrank_ratio": 0.125,
        "use_gradient_checkpointing": True, "use_shared_controllers": shared, "use_adaptive_stopping": adaptive,
        "adaptive_convergence_threshold": 0.001, "hierarchical_group_size": G, "excitation_sparsity": 0.1,
        "dtype": "bfloat16",
    }  # fmt: skip
    config.update(cfg)
    (run / "config.json").write_text(json.dumps({k: v for k, v in config.items() if v is not None}))
    return run


# ---- reference forward (fp64) --------------------------------------------------------------------------------------


def layer_norm(x, sd, key):
    mu = x.mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(((x - mu) ** 2).mean(-1, keepdim=True) + 1e-5) * sd[key + ".weight"] + sd[
        key + ".bias"
    ]


def integrate(sd, q, c, s, steps, early, thr=1e-3, sticky=True):
    """Final states (N, d) and (steps run, min |delta / thr - 1| over the checks made)."""
    mu = sd[q + "mu_global"] + sd[q + "mu_local_offsets"].repeat_interleave(G)[: s.shape[-1]]
    v, conv, margin = torch.zeros_like(s), torch.zeros(s.shape[0], dtype=torch.bool), math.inf
    for t in range(steps):
        h = torch.relu(torch.cat([c, s, v], -1) @ sd[q + "controller.0.weight"].T + sd[q + "controller.0.bias"])
        a, b, g = (h @ sd[q + "controller.2.weight"].T + sd[q + "controller.2.bias"]).split(s.shape[-1], dim=-1)
        v = torch.sigmoid(a) * v - F.softplus(b) * (s - mu)
        s_new = s + 0.1 * torch.sigmoid(g) * v
        if early and t >= 3:
            delta = (s_new - s).norm(dim=-1)
            margin = min(margin, (delta / thr - 1).abs().min().item())
            conv = (conv | (delta < thr)) if sticky else delta < thr
            if conv.all():
                return s_new, (t + 1, margin)
        s = s_new
    return s, (steps, margin)


def inl_forward(sd, ids, early=True, steps=STEPS):
    """Logits (B, T, V) and per layer (steps run, early-stop margin)."""
    sd = {k: t.to(F64) if t.is_floating_point() else t for k, t in sd.items()}
    B, T = ids.shape
    adaptive = "layers.0.inl.inl.mu_global" in sd
    if "token_embedding.embed_low.weight" in sd:
        x = sd["token_embedding.embed_low.weight"][ids] @ sd["token_embedding.project_up.weight"].T
    else:
        x = sd["token_embedding.weight"][ids]
    x = x + sd["pos_encoding.pe"][:, :T]
    info = []
    for i in range(L):
        p = f"layers.{i}."
        h = layer_norm(x, sd, p + "norm_attn")
        q, k, v = (h @ sd[p + "attention.in_proj_weight"].T + sd[p + "attention.in_proj_bias"]).chunk(3, dim=-1)
        q, k, v = (t.view(B, T, H, D // H).transpose(1, 2) for t in (q, k, v))
        s = (q @ k.transpose(-1, -2)) / math.sqrt(D // H)
        s = s.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), -math.inf)  # True = masked
        ctx = (torch.softmax(s, -1) @ v).transpose(1, 2).reshape(B, T, D)
        ctx = ctx @ sd[p + "attention.out_proj.weight"].T + sd[p + "attention.out_proj.bias"]
        x = x + ctx
        qn = p + ("inl.inl." if adaptive else "inl.")
        state, steps_info = integrate(
            sd, qn, ctx.reshape(B * T, D), layer_norm(x, sd, p + "norm1").reshape(B * T, D), steps, early and adaptive
        )
        info.append(steps_info)
        x = x + state.view(B, T, D)
        f = layer_norm(x, sd, p + "norm2") @ sd[p + "ff.0.weight"].T + sd[p + "ff.0.bias"]
        x = x + 0.5 * f * (1 + torch.erf(f / math.sqrt(2))) @ sd[p + "ff.3.weight"].T + sd[p + "ff.3.bias"]
    return layer_norm(x, sd, "final_norm") @ sd["lm_head.weight"].T, info


# ---- tests ---------------------------------------------------------------------------------------------------------


def test_preset_size():
    # SEEDS.md: 969,688,736 upstream, of which the dead SharedController holds 3 (64 d + 64) + (4d 64 + 4d) + 2 L 4
    with torch.device("meta"):
        model = Transformer(ModelConfig.from_name("inl-1b"))
    dead = 3 * (64 * 1600 + 64) + (6400 * 64 + 6400) + 2 * 28 * 4
    assert model.num_params() == 969_688_736 - dead


@pytest.mark.parametrize("adaptive", [True, False], ids=["adaptive", "fixed"])
@pytest.mark.parametrize("lowrank", [True, False], ids=["lowrank", "full-emb"])
@torch.no_grad()
def test_checkpoint_matches_reference_and_cache_equals_recompute(tmp_path, adaptive, lowrank):
    sd = inl_state_dict(adaptive, lowrank, shared=adaptive)
    model, tok = fastllm.load(write_run(tmp_path, sd, adaptive, lowrank, shared=adaptive))
    cfg = model.config
    assert (cfg.inl_early_stop, cfg.embed_rank, cfg.inl_iterations, cfg.inl_group_size) == (
        adaptive, RK if lowrank else 0, STEPS, G
    )  # fmt: skip
    assert cfg.max_seq_len == CTX and not cfg.tie_embeddings and cfg.n_head == H
    ids = torch.randint(0, V, (2, 13))
    want, info = inl_forward(sd, ids)
    assert [n for n, _ in info] == [STEPS] * L  # random weights: the early stop never fires
    assert (model(ids).double() - want).abs().max().item() <= 1e-5
    seq = ids[:1, :5]  # upstream generate: full recompute every step; fastllm: the KV cache
    for _ in range(16):
        seq = torch.cat([seq, inl_forward(sd, seq)[0][:, -1].argmax(-1, keepdim=True)], dim=1)
    cache = model.new_cache(1, seq.shape[1])
    logits = [model(seq[:, :5], cache)[:, -1]]
    for t in range(15):
        logits.append(model(seq[:, 5 + t : 6 + t], cache)[:, -1])
    logits = torch.stack(logits, dim=1)
    assert logits.argmax(-1).tolist() == seq[:, 5:].tolist()
    torch.testing.assert_close(logits, model(seq[:, :-1])[:, 4:], atol=1e-5, rtol=0)
    fastllm.save(model, tmp_path / "saved", tokenizer=tok)
    again, _ = fastllm.load(tmp_path / "saved")
    assert again.config == cfg and torch.equal(again(ids), model(ids))


def controller_that_settles(sd, q, k=0.7):
    """Tiny controller outputs: alpha ~ 0, gate ~ 1, softplus(beta) = 10 k so that s - mu shrinks by 1 - k a step."""
    sd[q + "controller.2.weight"] = 1e-3 * torch.randn(3 * D, 64)
    beta = math.log(math.expm1(10 * k))  # softplus^-1
    sd[q + "controller.2.bias"] = torch.cat([torch.full((D,), -20.0), torch.full((D,), beta), torch.full((D,), 20.0)])


@torch.no_grad()
def test_early_stop_fires_with_the_global_scope(tmp_path):
    steps = 12
    sd = inl_state_dict()
    controller_that_settles(sd, "layers.0.inl.inl.")  # layer 0 settles over several steps
    controller_that_settles(sd, "layers.1.inl.inl.", k=1e-5)  # layer 1 barely moves: below threshold from step 0
    model, _ = fastllm.load(write_run(tmp_path, sd, num_iterations_per_layer=steps))
    ids = torch.randint(0, V, (2, 13))
    want, info = inl_forward(sd, ids, steps=steps)
    (n0, margin0), (n1, _) = info
    # layer 0 stops late; layer 1 at the first check (step index 3, so 4 steps); no token within 0.1% of the
    # threshold (fp32 vs fp64 differ by ~1e-6); random weights never stop (the test above)
    assert 4 < n0 < steps and n1 == 4 and margin0 > 1e-3
    got = model(ids)
    assert [blk.inl.last_steps for blk in model.layers] == [n0, 4]
    assert (got.double() - want).abs().max().item() <= 1e-5
    # the decision spans the whole batch: one row alone may stop earlier, never later
    alone = [inl_forward(sd, ids[b : b + 1], steps=steps)[1][0][0] for b in range(2)]
    assert max(alone) == n0
    model(ids[:1])
    assert model.layers[0].inl.last_steps == alone[0]
    # train mode runs every step (dropout is not modelled: upstream's is the identity at eval, 0.1 in training)
    model.train()
    assert (model(ids).double() - inl_forward(sd, ids, early=False, steps=steps)[0]).abs().max().item() <= 1e-5
    assert [blk.inl.last_steps for blk in model.layers] == [steps, steps]


@torch.no_grad()
def test_convergence_flags_are_sticky():
    # two tokens oscillating at different frequencies (alpha ~ 1, per-token beta from the context): each dips below
    # the threshold at times the other does not; upstream keeps a token converged once it was, so it stops at the
    # step where the last token first dips (12), while "all below at once" would never happen in 20 steps
    d, steps = 8, 20
    cfg = ModelConfig.from_name(
        "inl-1b", n_layer=1, d_model=d, n_head=1, vocab_size=5, embed_rank=4, inl_iterations=steps, inl_group_size=4
    )
    integ = Integrator(cfg).eval()
    integ.ctrl_in.weight.zero_(), integ.ctrl_in.bias.zero_(), integ.ctrl_out.weight.zero_()
    integ.ctrl_in.weight[0, 0] = 1.0  # hidden 0 = relu(c[0])
    integ.ctrl_out.weight[d : 2 * d, 0] = 1.0  # beta = softplus(b0 + hidden 0)
    b0 = math.log(math.expm1(0.7))
    integ.ctrl_out.bias.copy_(torch.cat([torch.full((d,), 20.0), torch.full((d,), b0), torch.full((d,), 20.0)]))
    c = torch.zeros(2, d)
    c[0, 0] = math.log(math.expm1(1.0)) - b0  # token 0: beta = 1, token 1: beta = 0.7
    s = torch.nn.functional.normalize(torch.randn(2, d), dim=-1) * torch.tensor([[0.02], [0.06]])
    sd = {f"i.{k}": t.double() for k, t in integ.state_dict().items()}
    sd = {"i.mu_global": sd["i.mu_global"], "i.mu_local_offsets": sd["i.mu_offsets"]} | {
        f"i.controller.{j}.{w}": sd[f"i.ctrl_{n}.{w}"] for j, n in ((0, "in"), (2, "out")) for w in ("weight", "bias")
    }
    want, (n, margin) = integrate(sd, "i.", c.double(), s.double(), steps, early=True)
    assert integrate(sd, "i.", c.double(), s.double(), steps, early=True, sticky=False)[1][0] == steps
    assert n == 12 and margin > 1e-2
    got = integ(c, s)
    assert integ.last_steps == n
    torch.testing.assert_close(got.double(), want, atol=1e-7, rtol=0)


def test_missing_config_keys_are_named(tmp_path):
    sd = inl_state_dict()
    run = write_run(tmp_path, sd, num_heads=None)
    with pytest.raises(CheckpointError, match="'num_heads'"):
        fastllm.load(run)
    model, _ = fastllm.load(run, config={"num_heads": H})
    assert model.config.n_head == H
    write_run(tmp_path, sd, num_iterations_per_layer=None)
    with pytest.raises(CheckpointError, match="'num_iterations_per_layer'"):
        fastllm.load(run)
    sd["pos_encoding.pe"] = sd["pos_encoding.pe"] + 0.1  # not the sinusoid fastllm recomputes
    with pytest.raises(CheckpointError, match="pos_encoding.pe"):
        fastllm.load(write_run(tmp_path, sd))


def test_tokenizer_gpt2_plus_four_added_tokens(tmp_path):
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers

    sd = inl_state_dict(vocab=50261)
    run = write_run(tmp_path, sd, vocab_size=50261)
    text = "<SYSTEM> Be brief.\n<USER> Hello there!\n<ASSISTANT> Hi<|endoftext|>"
    _, tok = fastllm.load(run)  # no tokenizer files: GPT-2's bundled vocabulary + the added tokens
    ids = tok.encode(text, allowed_special="all")
    assert [tok.token_to_id(t) for t in ADDED] == [50257, 50258, 50259, 50260] and tok.vocab_size == 50261
    assert ids[:2] == [50259, 1355] and tok.decode(ids) == text
    # save_pretrained's tokenizer.json (GPT-2 + the added specials): fastllm ids are the HF ids
    hf = HFTokenizer(models.BPE.from_file(os.path.join(ASSETS, "encoder.json"), os.path.join(ASSETS, "vocab.bpe")))
    hf.pre_tokenizer, hf.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    hf.add_special_tokens(["<|endoftext|>", *ADDED])
    hf.save(str(run / "tokenizer.json"))
    _, tok = fastllm.load(run)
    assert tok.encode(text, allowed_special="all") == hf.encode(text).ids == ids
