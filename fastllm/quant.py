"""Int8 quantization of a model's linear layers, for decoding on the CPU: weight-only ("int8") or W8A8 ("w8a8").

`quantize(model)` replaces every `nn.Linear` whose weight is only used through its forward by an `Int8Linear`:
per-output-row symmetric int8 codes (max |w| / 127 per row) stored in the packed layout of fastllm's CPU kernel,
an fp32 scale per row, the bias kept in its dtype. Activations stay in the model's dtype (fp32 or bf16); a decode
step streams a quarter of the fp32 weight bytes, dequantized in registers, accumulated in fp32
(`fastllm.kernels.int8_linear`). Embeddings, norms and the linears whose weights are read directly (the MLA
up-projection `wkv_b`, absorbed into the queries; listed by a module's `keep_float`) stay as they are. A tied
LM head gets its own int8 copy; the embedding it was tied to stays float.

"w8a8" stores the same codes, in the kernel's VNNI layout (`pack_int8(..., layout="vnni")`), and also quantizes
each activation row to int8 on the fly (per row, symmetric), so that the dot products run in integers
(`fastllm.kernels.int8_linear(..., activations="int8")`: AVX-512 VNNI on the CPU, what CTranslate2's int8 does); it
pays off at batch > 1, where the weight-only kernel's fp32 multiply-adds bound the step.

The accuracy cost is measured as the perplexity change on real text (benches/bench_generate.py,
tests/test_cpu_kernels.py). Inference only: an Int8Linear has no gradient.
"""

from __future__ import annotations

import torch
from torch import nn

import fastllm.kernels as K
from fastllm.kernels.cpu import native

MODES = ("int8", "w8a8")  # weight-only; weights and activations


class Int8Linear(nn.Module):
    """y = x @ (codes * scale[:, None])^T + bias; buffers `packed` (the codes in a `pack_int8` layout: "tiles" for
    weight-only layers, "vnni" for W8A8 ones by `from_linear`), `scale` (N,) fp32, `bias` (N,) or None.
    activations="int8": x quantized per row too (W8A8)."""

    def __init__(self, in_features: int, out_features: int, packed, scale, bias=None, activations: str = "float"):
        super().__init__()
        if activations not in ("float", "int8"):
            raise ValueError(f"Int8Linear: activations must be 'float' or 'int8', got {activations!r}")
        self.in_features, self.out_features, self.activations = in_features, out_features, activations
        self._op = "int8_linear" if activations == "float" else "w8a8_linear"
        self.register_buffer("packed", packed)
        self.register_buffer("scale", scale)
        self.register_buffer("bias", bias)

    @classmethod
    def from_linear(cls, linear: nn.Linear, activations: str = "float") -> Int8Linear:
        codes, scale = K.quantize_int8(linear.weight)  # (N, K) int8, (N,) fp32
        bias = None if linear.bias is None else linear.bias.detach().clone()
        packed = K.pack_int8(codes, layout="vnni" if activations == "int8" else "tiles")
        return cls(linear.in_features, linear.out_features, packed, scale, bias, activations)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(f"Int8Linear: expected (..., {self.in_features}) inputs, got {tuple(x.shape)}")
        # the op itself, not the checked K.int8_linear: the buffers are consistent by construction and the
        # kernel's launcher checks what it reads; ~50 calls per decode step make the difference measurable
        return native.op(self._op, x.device)(x, self.packed, self.scale, self.bias)

    def dequantized_weight(self) -> torch.Tensor:
        """The (N, K) fp32 weight the layer computes with."""
        return K.dequantize_int8(self.packed, self.scale, self.in_features)

    def extra_repr(self) -> str:
        sizes = f"in_features={self.in_features}, out_features={self.out_features}"
        return f"{sizes}, bias={self.bias is not None}, activations={self.activations}"


@torch.no_grad()
def quantize(model: nn.Module, dtype: str = "int8") -> nn.Module:
    """Replaces the model's linear layers by int8 ones, in place; returns the model. dtype: "int8" (weight-only)
    or "w8a8" (activations quantized per row too).

    Every `nn.Linear` child is replaced unless its parent lists its name in `keep_float` (weights read outside
    the layer's forward). Biases keep their dtype, so run the model in the dtype it had (fp32 or bf16).
    """
    if dtype not in MODES:
        raise ValueError(f"quantize: unsupported dtype {dtype!r}; expected one of {MODES}")
    activations = "int8" if dtype == "w8a8" else "float"
    for parent in list(model.modules()):
        keep = getattr(parent, "keep_float", ())
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear) and name not in keep:
                setattr(parent, name, Int8Linear.from_linear(child, activations))
    return model


def is_quantized(model: nn.Module) -> bool:
    return any(isinstance(m, Int8Linear) for m in model.modules())
