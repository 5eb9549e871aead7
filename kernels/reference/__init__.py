"""Eager PyTorch references of every fastllm kernel: torch only, importable without Triton.

They are the CPU/MPS path behind `fastllm.kernels` and the oracles the Triton kernels are tested against. Each
takes the same arguments as its public op (documented in `fastllm.kernels`), computes in fp32 (fp64 inputs stay
fp64) and returns the input dtype.
"""

from fastllm.kernels.reference.attention import sliding_window_attention as sliding_window_attention
from fastllm.kernels.reference.attention import sliding_window_attention_backward as sliding_window_attention_backward
from fastllm.kernels.reference.attention import swa_decode as swa_decode
from fastllm.kernels.reference.glu import glu as glu
from fastllm.kernels.reference.glu import glu_backward as glu_backward
from fastllm.kernels.reference.glu import glu_linear as glu_linear
from fastllm.kernels.reference.glu import glu_packed as glu_packed
from fastllm.kernels.reference.glu import glu_packed_backward as glu_packed_backward
from fastllm.kernels.reference.mla import mla_decode as mla_decode
from fastllm.kernels.reference.mla import mla_decode_naive as mla_decode_naive
from fastllm.kernels.reference.sampling import sample as sample
from fastllm.kernels.reference.sampling import sample_from_noise as sample_from_noise
from fastllm.kernels.reference.sampling import sample_philox as sample_philox
from fastllm.kernels.reference.sampling import sampling_probs as sampling_probs
