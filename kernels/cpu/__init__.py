"""fastllm's C++ CPU kernels (the `fastllm._cpu` extension) behind validating launchers."""

from fastllm.kernels.cpu.attention import mla_decode as mla_decode
from fastllm.kernels.cpu.attention import supports as supports_attention  # noqa: F401 (as used by _ops)
from fastllm.kernels.cpu.attention import swa_decode as swa_decode
from fastllm.kernels.cpu.linear import MAX_M as MAX_M
from fastllm.kernels.cpu.linear import MAX_M_PACKED as MAX_M_PACKED
from fastllm.kernels.cpu.linear import X_DTYPES as X_DTYPES
from fastllm.kernels.cpu.linear import decode_threads as decode_threads
from fastllm.kernels.cpu.linear import grouped_linear as grouped_linear
from fastllm.kernels.cpu.linear import isa as isa
from fastllm.kernels.cpu.linear import linear as linear
from fastllm.kernels.cpu.linear import linear_int8_packed as linear_int8_packed
from fastllm.kernels.cpu.linear import linear_packed as linear_packed
from fastllm.kernels.cpu.linear import supports as supports
from fastllm.kernels.cpu.linear import threads as threads
from fastllm.kernels.cpu.sampling import greedy as greedy
from fastllm.kernels.cpu.sampling import supports as supports_greedy  # noqa: F401 (as used by _ops)
