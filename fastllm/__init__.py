"""fastllm: fast training and inference for small and mid-size decoder LLMs.

Triton kernels for the hot spots (`fastllm.kernels`), a C++ byte-level BPE tokenizer
(`fastllm.tokenizer`), and a thin PyTorch model layer.
"""

from fastllm.checkpoints import load as load
from fastllm.checkpoints import save as save
from fastllm.models import ModelConfig as ModelConfig
from fastllm.models import Transformer as Transformer
from fastllm.tokenizer import Tokenizer as Tokenizer
from fastllm.tokenizer import train_bpe as train_bpe

__version__ = "0.1.0"
