"""fastllm: fast training and inference for small and mid-size decoder LLMs.

Triton kernels for the hot spots (`fastllm.kernels`), a C++ byte-level BPE tokenizer
(`fastllm.tokenizer`), and a thin PyTorch model layer (`fastllm.models`, `fastllm.checkpoints`).
"""

import importlib

from fastllm.tokenizer import Tokenizer as Tokenizer
from fastllm.tokenizer import train_bpe as train_bpe

__version__ = "0.1.0"

# The model layer imports torch (and fastllm.patching transformers); load them on first use so that the tokenizer
# alone stays light.
_LAZY = {
    "load": "fastllm.checkpoints",
    "save": "fastllm.checkpoints",
    "ModelConfig": "fastllm.models",
    "Transformer": "fastllm.models",
    "generate": "fastllm.generate",
    "patch": "fastllm.patching",
    "unpatch": "fastllm.patching",
    "patch_llama": "fastllm.patching",
    "patch_mistral": "fastllm.patching",
    "patch_qwen2": "fastllm.patching",
    "patch_gpt2": "fastllm.patching",
}
__all__ = ["Tokenizer", "train_bpe", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'fastllm' has no attribute {name!r}")
