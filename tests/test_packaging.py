"""The installed package: the native module, the kernels mapped from kernels/, the bundled assets."""

import importlib
import os

import fastllm


def test_native_extension_imports():
    bpe = importlib.import_module("fastllm._bpe")
    assert hasattr(bpe, "CoreBPE") and hasattr(bpe, "BpeTrainer")
    assert os.path.dirname(bpe.__file__) == os.path.dirname(fastllm.__file__)


def test_kernels_are_installed_as_fastllm_kernels():
    kernels = importlib.import_module("fastllm.kernels")
    repo_kernels = os.path.join(os.path.dirname(os.path.dirname(fastllm.__file__)), "kernels")
    assert os.path.samefile(os.path.dirname(kernels.__file__), repo_kernels)
    importlib.import_module("fastllm.kernels.reference")


def test_gpt2_vocabulary_is_bundled():
    for name in ("encoder.json", "vocab.bpe"):
        assert os.path.getsize(os.path.join(fastllm.tokenizer.ASSETS, name)) > 100_000
    assert fastllm.Tokenizer.gpt2().vocab_size == 50257
