"""Bad checkpoints: every error names the file, the key and what was expected."""

import json
import re

import pytest
import torch

import fastllm
from fastllm.checkpoints import CheckpointError

D, V, CTX = 16, 31, 8


def raschka_sd():
    sd = {"tok_emb.weight": torch.randn(V, D), "pos_emb.weight": torch.randn(CTX, D)}
    for i in range(2):
        p = f"trf_blocks.{i}."
        sd[p + "att.mask"] = torch.triu(torch.ones(CTX, CTX), diagonal=1)
        for n in ("W_query", "W_key", "W_value"):
            sd[p + f"att.{n}.weight"] = torch.randn(D, D)
        sd |= {p + "att.out_proj.weight": torch.randn(D, D), p + "att.out_proj.bias": torch.randn(D)}
        sd |= {p + "ff.layers.0.weight": torch.randn(4 * D, D), p + "ff.layers.0.bias": torch.randn(4 * D)}
        sd |= {p + "ff.layers.2.weight": torch.randn(D, 4 * D), p + "ff.layers.2.bias": torch.randn(D)}
        for n in ("norm1", "norm2"):
            sd |= {p + f"{n}.scale": torch.ones(D), p + f"{n}.shift": torch.zeros(D)}
    sd |= {"final_norm.scale": torch.ones(D), "final_norm.shift": torch.zeros(D), "out_head.weight": torch.randn(V, D)}
    return sd


def save(tmp_path, obj, name="gpt-model.pt"):
    path = tmp_path / name
    torch.save(obj, path)
    return path


def raises(path, *fragments, config=None):
    with pytest.raises(CheckpointError) as e:
        fastllm.load(path, config=config)
    msg = str(e.value)
    for frag in (str(path), *fragments):
        assert frag in msg, (frag, msg)
    return msg


def test_good_file_loads(tmp_path):
    model, _ = fastllm.load(save(tmp_path, raschka_sd()), config={"n_heads": 4})
    assert model.config.n_head == 4 and model.config.n_layer == 2


def test_raw_gpt124m_without_head_count_names_the_key(tmp_path):
    raises(save(tmp_path, raschka_sd()), "'n_heads'", "config={'n_heads': ...}")


def test_truncated_torch_file(tmp_path):
    path = save(tmp_path, raschka_sd())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    raises(path, "truncated", config={"n_heads": 4})


def test_truncated_safetensors(tmp_path):
    model = fastllm.Transformer(
        fastllm.ModelConfig.from_name("gpt2", n_layer=1, d_model=16, n_head=2, vocab_size=V, max_seq_len=CTX)
    )
    fastllm.save(model, tmp_path)
    path = tmp_path / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 100])
    raises(path, "truncated")


def test_missing_tensor(tmp_path):
    sd = raschka_sd()
    del sd["trf_blocks.1.att.W_key.weight"]
    raises(save(tmp_path, sd), "missing tensor 'trf_blocks.1.att.W_key.weight'", f"({D}, {D})", config={"n_heads": 4})


def test_wrong_shape(tmp_path):
    sd = raschka_sd()
    sd["trf_blocks.0.ff.layers.2.bias"] = torch.randn(D + 1)
    raises(
        save(tmp_path, sd),
        "'trf_blocks.0.ff.layers.2.bias'",
        f"shape ({D + 1},)",
        f"expected ({D},)",
        config={"n_heads": 4},
    )


def test_head_count_that_does_not_divide(tmp_path):
    raises(save(tmp_path, raschka_sd()), "n_heads=5", config={"n_heads": 5})


def test_unexpected_tensor(tmp_path):
    sd = raschka_sd()
    sd["trf_blocks.0.att.rotary.inv_freq"] = torch.randn(4)
    raises(save(tmp_path, sd), "unexpected tensors", "trf_blocks.0.att.rotary.inv_freq", config={"n_heads": 4})


def test_missing_layer(tmp_path):
    sd = {k: t for k, t in raschka_sd().items() if not k.startswith("trf_blocks.0.")}
    raises(save(tmp_path, sd), "layers [0] are missing", config={"n_heads": 4})


def test_unknown_format(tmp_path):
    raises(
        save(tmp_path, {"encoder.layer.0.weight": torch.randn(3)}),
        "unknown checkpoint format",
        "encoder.layer.0.weight",
    )


def test_no_state_dict_inside(tmp_path):
    raises(save(tmp_path, {"step": 3, "optimizer": {"lr": 1.0}}), "no state_dict found", "'model_state_dict'")


class NotATensor:
    pass


def test_pickled_objects_are_refused_by_default(tmp_path):
    path = save(tmp_path, {"model_state_dict": raschka_sd(), "extra": NotATensor()})
    raises(path, "weights_only", config={"n_heads": 4})


def test_unsupported_hf_config(tmp_path):
    model = fastllm.Transformer(
        fastllm.ModelConfig.from_name("gpt2", n_layer=1, d_model=16, n_head=2, vocab_size=V, max_seq_len=CTX)
    )
    sd = {
        "transformer.wte.weight": model.tok_emb.weight,
        "transformer.wpe.weight": model.pos_emb.weight,
        "transformer.h.0.attn.c_attn.weight": torch.randn(D, 3 * D),
    }
    torch.save({k: t.detach() for k, t in sd.items()}, tmp_path / "pytorch_model.bin")
    (tmp_path / "config.json").write_text(
        json.dumps({"model_type": "gpt2", "n_head": 2, "activation_function": "relu"})
    )
    raises(tmp_path / "pytorch_model.bin", "activation_function='relu'")


def test_directory_errors(tmp_path):
    with pytest.raises(CheckpointError, match="no such file"):
        fastllm.load(tmp_path / "nope")
    save(tmp_path, raschka_sd(), "a.pt")
    save(tmp_path, raschka_sd(), "b.pt")
    with pytest.raises(CheckpointError, match=re.escape("found ['a.pt', 'b.pt']")):
        fastllm.load(tmp_path)


def test_bad_native_config(tmp_path):
    fastllm.save(
        fastllm.Transformer(
            fastllm.ModelConfig.from_name("gpt2", n_layer=1, d_model=16, n_head=2, vocab_size=V, max_seq_len=CTX)
        ),
        tmp_path,
    )
    cfg = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "norm": "batchnorm"}))
    raises(tmp_path, "config.json", "norm='batchnorm'")
