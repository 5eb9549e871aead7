"""Int8 linear layers, reference side: the quantizer, the packed layouts, the dequantizing and W8A8 linears.

Weights are quantized per output row, symmetric: codes in [-127, 127] and one fp32 scale per row (max |w| / 127),
w ~= codes * scale. The codes are stored packed for the CPU kernels (csrc/cpu/linear.h), in one of two layouts:
- "tiles" (int8): zero-padded to whole tiles of PACK_ROWS rows and PACK_COLS columns, each tile's (PACK_ROWS,
  PACK_COLS) blocks one after the other, so a tile is one sequential run of memory. What the weight-only kernel
  reads (fp32 or bf16 activations), and W8A8 too.
- "vnni" (uint8, codes + 128): tiles of VNNI_ROWS rows, each a run of (VNNI_COLS columns x VNNI_ROWS rows)
  groups, so one 64-byte vector holds 4 columns of 16 rows: the operand of one AVX-512 VNNI instruction against 4
  int8 activations, 16 outputs per vector. W8A8 only (the weight-only kernel reads "tiles"); any other call
  unpacks it.
Float weights (`pack_weight`) take "tiles" or "vnni2": tiles of VNNI_ROWS rows, each a run of (VNNI2_COLS columns
x VNNI_ROWS rows) groups, so one 64-byte vector holds 2 bf16 columns of 16 rows, the operand of one AVX512-BF16
vdpbf16ps against 2 activations (bf16 weights times bf16 activations; other CPUs read it too, slower).
Everything here is plain torch and runs on any device; it is the oracle of the kernels and the path for devices
and row counts the kernels do not take.
"""

import torch
import torch.nn.functional as F

PACK_ROWS, PACK_COLS = 8, 64
VNNI_ROWS, VNNI_COLS = 16, 4
VNNI2_COLS = 2
LAYOUTS = ("tiles", "vnni")  # of int8 codes
WEIGHT_LAYOUTS = ("tiles", "vnni2")  # of float weights
_VNNI_OFFSET = 128  # "vnni" stores codes + 128 (the unsigned operand of vpdpbusd)


def quantize_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """weight (N, K) float -> codes (N, K) int8 in [-127, 127], scale (N,) fp32, weight ~= codes * scale[:, None].
    scale = max |row| / 127 (1 for an all-zero row); codes round to nearest."""
    w = weight.detach().float()  # (N, K)
    amax = w.abs().amax(dim=1)  # (N,)
    scale = torch.where(amax > 0, amax / 127.0, torch.ones_like(amax))  # (N,)
    codes = torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8)  # (N, K)
    return codes, scale


def packed_shape(N: int, K: int, layout: str = "tiles") -> tuple[int, int, int, int]:
    """The shape of (N, K) packed in `layout`: "tiles" (ceil(N / 8), ceil(K / 64), 8, 64), "vnni" (ceil(N / 16),
    ceil(K / 4), 16, 4), "vnni2" (ceil(N / 16), ceil(K / 2), 16, 2)."""
    if layout == "vnni":
        return (-(-N // VNNI_ROWS), -(-K // VNNI_COLS), VNNI_ROWS, VNNI_COLS)
    if layout == "vnni2":
        return (-(-N // VNNI_ROWS), -(-K // VNNI2_COLS), VNNI_ROWS, VNNI2_COLS)
    return (-(-N // PACK_ROWS), -(-K // PACK_COLS), PACK_ROWS, PACK_COLS)


def packed_layout(packed: torch.Tensor) -> str:
    """The layout of a `pack_int8` or `pack_weight` result: "vnni" for uint8, "vnni2" for (..., 16, 2) blocks,
    "tiles" otherwise."""
    if packed.dtype == torch.uint8:
        return "vnni"
    return "vnni2" if tuple(packed.shape[-2:]) == (VNNI_ROWS, VNNI2_COLS) else "tiles"


def pack_weight(weight: torch.Tensor, *, layout: str = "tiles") -> torch.Tensor:
    """weight (N, K) of any dtype -> packed in `layout` (module docstring), in the same dtype, zero-padded:
    "tiles" (ceil(N / 8), ceil(K / 64), 8, 64), "vnni2" (ceil(N / 16), ceil(K / 2), 16, 2).

    Float weights packed so are what `fastllm::linear_packed` reads; the compiled CPU decode step packs its frozen
    weights with it (constant-folded: once, when compiling), "vnni2" for bf16 on CPUs with AVX512-BF16."""
    if weight.dim() != 2:
        raise ValueError(f"pack_weight: expected an (N, K) weight, got {tuple(weight.shape)}")
    if layout not in WEIGHT_LAYOUTS:
        raise ValueError(f"pack_weight: layout must be one of {WEIGHT_LAYOUTS}, got {layout!r}")
    N, K = weight.shape
    T, C, R, W = packed_shape(N, K, layout)
    padded = F.pad(weight, (0, C * W - K, 0, T * R - N))  # (Np, Kp)
    return padded.view(T, R, C, W).transpose(1, 2).contiguous()  # (T, C, R, W)


def pack_int8(codes: torch.Tensor, *, layout: str = "tiles") -> torch.Tensor:
    """codes (N, K) int8 -> packed, zero codes padding whole tiles (module docstring):
    "tiles": (ceil(N / 8), ceil(K / 64), 8, 64) int8, for the weight-only and W8A8 kernels;
    "vnni": (ceil(N / 16), ceil(K / 4), 16, 4) uint8 holding codes + 128, for the W8A8 kernel only (its fastest)."""
    if codes.dtype != torch.int8 or codes.dim() != 2:
        raise ValueError(f"pack_int8: expected (N, K) int8 codes, got {tuple(codes.shape)} {codes.dtype}")
    if layout not in LAYOUTS:
        raise ValueError(f"pack_int8: layout must be one of {LAYOUTS}, got {layout!r}")
    if layout == "tiles":
        return pack_weight(codes)
    N, K = codes.shape
    T, G, R, C = packed_shape(N, K, "vnni")
    padded = F.pad(codes.to(torch.int16) + _VNNI_OFFSET, (0, G * C - K, 0, T * R - N), value=_VNNI_OFFSET)
    return padded.to(torch.uint8).view(T, R, G, C).transpose(1, 2).contiguous()  # (T, G, R, C)


def unpack_weight(packed: torch.Tensor, N: int, K: int) -> torch.Tensor:
    """The (N, K) weight of a `pack_weight` (either layout) or `pack_int8(..., layout="tiles")` result."""
    T, C, R, W = packed.shape
    return packed.transpose(1, 2).reshape(T * R, C * W)[:N, :K]


def unpack_int8(packed: torch.Tensor, N: int, K: int) -> torch.Tensor:
    """The (N, K) int8 codes of a `pack_int8` result, either layout."""
    if packed_layout(packed) == "tiles":
        return unpack_weight(packed, N, K)
    codes = unpack_weight(packed, N, K).to(torch.int16) - _VNNI_OFFSET  # the same transpose: (T, G, 16, 4)
    return codes.to(torch.int8)


def linear_packed(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None, out_features: int):
    """x (..., K) @ weight^T + bias -> (..., N) for a float weight (N, K) packed by `pack_weight` (either layout):
    F.linear."""
    return F.linear(x, unpack_weight(packed, out_features, x.shape[-1]), bias)


def grouped_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """x (..., G, K) @ weight (G, N, K) per group g (+ bias (G, N)) -> (..., G, N) in x's dtype, computed in fp32:
    independent linears side by side (MLA's per-head up projections)."""
    y = torch.einsum("...gk,gnk->...gn", x.float(), weight.float())
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype)


def dequantize_int8(packed: torch.Tensor, scale: torch.Tensor, K: int) -> torch.Tensor:
    """The fp32 weight (N, K) = codes * scale[:, None] of a packed int8 weight, N = scale.shape[0]."""
    return unpack_int8(packed, scale.shape[0], K).float() * scale.float()[:, None]


def int8_linear(x: torch.Tensor, packed: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None):
    """x (..., K) @ (codes * scale[:, None])^T + bias -> (..., N) in x's dtype, computed in fp32."""
    w = dequantize_int8(packed, scale, x.shape[-1])  # (N, K)
    return F.linear(x.float(), w, None if bias is None else bias.float()).to(x.dtype)


def quantize_rows_int8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Activations x (..., K) -> codes (..., K) int8 and scales (..., 1) fp32, per row and symmetric: scale =
    max |row| / 127, codes = round(x / scale) (half to even) in [-127, 127]. A row of zeros gets zero codes; a
    row holding NaN or an infinity gets scale NaN and zero codes (its outputs are NaN)."""
    xf = x.float()
    amax = xf.abs().amax(-1, keepdim=True)  # (..., 1)
    s = torch.where(torch.isfinite(amax), amax / 127.0, torch.full_like(amax, float("nan")))  # (..., 1)
    q = torch.where(s > 0, torch.round(xf / s).clamp(-127, 127), torch.zeros_like(xf))  # (..., K)
    return q.to(torch.int8), s


def int8_linear_w8a8(x: torch.Tensor, packed: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None):
    """W8A8: `int8_linear` with the activations quantized too (`quantize_rows_int8`), the dot products exact in
    integers: y = float(q @ codes^T) * s_x * scale + bias in fp32 (in that order), in x's dtype."""
    K, N = x.shape[-1], scale.shape[0]
    q, s = quantize_rows_int8(x.reshape(-1, K))  # (M, K), (M, 1)
    codes = unpack_int8(packed, N, K)  # (N, K)
    if q.is_cpu:
        acc = torch._int_mm(q, codes.t())  # (M, N) int32, exact
    else:
        acc = q.double() @ codes.double().t()  # (M, N) exact: |acc| < 2^53
    y = acc.float() * s * scale.float()
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype).view(*x.shape[:-1], N)
