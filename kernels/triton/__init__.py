"""Triton kernels and their launchers; importing this package registers each launcher with `_dispatch`.

Imported lazily by `fastllm.kernels._dispatch.triton_status` (only when Triton imports), never at
`import fastllm.kernels`, so CPU users without Triton never pay for it. Each module below registers its launchers
with `@register_triton(op)` and lists the kernel configurations it can launch in `aot_configs()` (see `_aot.py`).
"""

from fastllm.kernels.triton import attention as attention
from fastllm.kernels.triton import decode as decode
from fastllm.kernels.triton import glu as glu
from fastllm.kernels.triton import mla as mla
from fastllm.kernels.triton import sampling as sampling
