"""Hugging Face GPT-2 checkpoints (`save_pretrained`) against transformers itself: logits and greedy generation."""

import copy
import json

import pytest
import torch

import fastllm
from fastllm.tokenizer import Tokenizer

transformers = pytest.importorskip("transformers")


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matmuls: avoid oversubscription stalls on loaded machines
    torch.manual_seed(0)
    yield
    torch.set_num_threads(n)


def hf_model(**kw):
    # bos/eos None: with a tiny random vocab an eos id would stop generate() early; fp32 eager attention
    cfg = transformers.GPT2Config(bos_token_id=None, eos_token_id=None, pad_token_id=None, **kw)
    model = transformers.GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))  # away from init: LayerNorm weights != 1, biases != 0
    return model


@torch.no_grad()
def assert_logits_match(model, hf, ids):
    """fastllm's fp32 logits against transformers' in fp64: within twice the error of transformers' own fp32 forward
    (two fp32 implementations differ by a few ulps of the logits, ~1e-5 at gpt2-medium's width on some CPUs)."""
    want = copy.deepcopy(hf).double()(ids).logits
    ours = (model(ids).double() - want).abs().max().item()
    theirs = (hf(ids).logits.double() - want).abs().max().item()
    assert ours <= 2 * theirs + 1e-6, (ours, theirs)


@torch.no_grad()
def greedy_cached(model, ids, n):
    cache = model.new_cache(ids.shape[0], ids.shape[1] + n)
    out = [model(ids, cache, last_only=True)[:, -1].argmax(-1, keepdim=True)]
    for _ in range(n - 1):
        out.append(model(out[-1], cache)[:, -1].argmax(-1, keepdim=True))
    return torch.cat([ids] + out, dim=1)


def test_save_pretrained_safetensors(tmp_path):
    hf = hf_model(n_embd=48, n_layer=3, n_head=4, vocab_size=211, n_positions=64)
    hf.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    model, tok = fastllm.load(tmp_path)
    assert model.config.tie_embeddings and model.config.mlp == "gelu_tanh" and model.config.n_head == 4
    ids = torch.randint(0, 211, (2, 17))
    assert_logits_match(model, hf, ids)
    prompt = ids[:1, :6]
    want = hf.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False, max_new_tokens=32)
    assert greedy_cached(model, prompt, 32).tolist() == want.tolist()
    assert isinstance(tok, Tokenizer) and tok.encode("Hello world") == [15496, 995]


def test_pytorch_model_bin_with_old_buffers_and_untied_head(tmp_path):
    hf = hf_model(
        n_embd=32,
        n_layer=2,
        n_head=2,
        vocab_size=101,
        n_positions=32,
        tie_word_embeddings=False,
        activation_function="gelu",
        layer_norm_epsilon=1e-6,
    )
    sd = dict(hf.state_dict())
    for i in range(2):  # what older transformers versions saved: causal-mask buffers, junk for loading
        sd[f"transformer.h.{i}.attn.bias"] = torch.tril(torch.ones(1, 1, 32, 32))
        sd[f"transformer.h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    torch.save(sd, tmp_path / "pytorch_model.bin")
    hf.config.save_pretrained(tmp_path)
    model, _ = fastllm.load(tmp_path)
    assert not model.config.tie_embeddings and model.config.mlp == "gelu" and model.config.norm_eps == 1e-6
    ids = torch.randint(0, 101, (3, 11))
    assert_logits_match(model, hf, ids)


def test_gpt2_medium_shapes(tmp_path):
    # gpt2-medium dims (d 1024, 16 heads, ff 4096, 1024 positions, V 50257) with 1 layer instead of 24 to stay fast
    hf = hf_model(n_embd=1024, n_layer=1, n_head=16, vocab_size=50257, n_positions=1024)
    hf.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["n_embd"] == 1024 and config["n_head"] == 16
    model, _ = fastllm.load(tmp_path)
    assert model.config == fastllm.ModelConfig.from_name("gpt2-medium", n_layer=1)
    ids = torch.randint(0, 50257, (1, 9))
    assert_logits_match(model, hf, ids)


def test_dtype_and_native_roundtrip(tmp_path):
    hf = hf_model(n_embd=32, n_layer=2, n_head=4, vocab_size=97, n_positions=32)
    hf.save_pretrained(tmp_path / "hf")
    model, tok = fastllm.load(tmp_path / "hf", dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    assert model.lm_head.weight is model.tok_emb.weight
    fastllm.save(model, tmp_path / "native")  # no tokenizer given: the gpt2 family defaults to GPT-2's
    again, tok2 = fastllm.load(tmp_path / "native")
    assert again.lm_head.weight is again.tok_emb.weight
    ids = torch.randint(0, 97, (1, 8))
    assert torch.equal(again(ids), model(ids)) and tok2.encode("hi") == tok.encode("hi")
