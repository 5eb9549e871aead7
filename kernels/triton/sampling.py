"""Triton fused sampler: repetition penalty, temperature, top-k, top-p, min-p and the draw, one program per row.

Semantics are those of `fastllm.kernels.sample` and its reference (`fastllm.kernels.reference.sampling`), without
sorting anything. One program owns one row of the (B, V) logits and walks it BLOCK entries at a time, in passes:

1. penalty, only with a token history: copy the row into a per-row fp32 scratch, then store over it the penalised
   value of every id in prev_tokens, computed from the original logit, so that an id listed twice is penalised
   once (duplicates store the same value). Ids < 0 are padding; ids >= V are skipped and flagged.
2. max and first argmax of the penalised logits z, and the error flags. The argmax is the greedy id, bit-exact
   (the argmax of the same fp32 values); a temperature-0 row stores it and stops here.
3. zt = (z - max z) / t with IEEE division (`div_rn`; plain `/` is approximate on NVIDIA GPUs), bit for bit the
   reference's fp32 values, -0 made +0 so that it ties with +0 as in float comparisons. zt replaces the scratch.
4. up to 8 passes for top-k and up to 8 for top-p (none for a filter that is off): a radix select (`_search`) on
   the ordered bit pattern of zt, 4 bits per pass, finds each threshold exactly. Top-k: the k-th largest zt, so
   every token tied with it is kept. Top-p, over the top-k survivors with exp(zt) as weights: the largest value
   whose mass at or above it reaches top_p of their total, which is the reference's rule (the smallest sorted
   prefix reaching top_p, the crossing token and its ties included).
5. the draw: kept = zt >= the threshold, exp(zt) >= min_p (exp(zt) = p / p_max) and exp(zt) > 0; the id is the
   argmax over kept tokens of exp(zt) / E with E = -log(u), u ~ U[0, 1): the reference's exponential race, an
   exact draw from the renormalised kept distribution, with no normalisation pass. u comes from `noise` (the
   `sample_from_noise` op) or from Philox4x32-10 in registers (`sample_philox`): key = the row's int64 seed,
   counter = (token id, row, 0, 0) for a (1,) seed shared by the batch and (token id, 0, 0, 0) for per-row (B,)
   seeds, so that such a row's stream depends on its own seed only. Blocks with no kept token skip Philox.

So a row costs 3 passes over V (4 with a history), plus 1 to 8 per active filter, all but the first reading the
L2-resident fp32 scratch (B * V * 4 bytes, allocated per call).

Exactness: greedy ids, top-k with its ties, the top-p rule and min-p compare the reference's exact zt. Masses are
summed in another order than the reference's softmax and cumsum, so only a token whose top-p mass or min-p ratio
lies within fp32 rounding of the cut can land on the other side, and the draw compares exp(zt) / E where the
reference compares softmax / E. Given the same noise, kernel and reference return the same ids
(tests/test_triton_sampling.py).

Errors cannot raise without a host sync: the kernel ORs the bits of `reference.sampling.FLAG_MESSAGES` (NaN, +inf,
a row of -inf, a parameter out of range, an id >= V in prev_tokens) into an int32 flag and still gives such a row
an id in [0, V). The launchers check the flag once per call (one host read) unless the caller passes its own
`nan_flag`, which is then only accumulated (the engine reads it at its sync points).

One program per row: each pass of a search needs the whole row's counts, so splitting a row over programs would
take a grid-wide barrier or one launch per pass; batches fill the GPU, a lone row runs on one SM.
"""

import torch
import triton
import triton.language as tl

from fastllm.kernels._dispatch import register_triton
from fastllm.kernels.reference import sampling as ref
from fastllm.kernels.triton._aot import AOTConfig

BLOCK = 1024  # vocabulary entries per step of every pass
NUM_WARPS = 8
_TL_DTYPES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}

_FLAG_NAN = tl.constexpr(ref.FLAG_NAN)
_FLAG_POSINF = tl.constexpr(ref.FLAG_POSINF)
_FLAG_NEG_INF_ROW = tl.constexpr(ref.FLAG_NEG_INF_ROW)
_FLAG_BAD_PARAM = tl.constexpr(ref.FLAG_BAD_PARAM)
_FLAG_BAD_TOKEN = tl.constexpr(ref.FLAG_BAD_TOKEN)


@triton.jit
def _search(zt_row, V, floor, goal, MASS: tl.constexpr, BLOCK: tl.constexpr):
    """Key threshold of one filter over the values of zt_row whose ordered key is >= floor (the live values).

    Finds the largest present value v with F(v) >= goal, where F(v) counts the live values >= v (MASS=False, goal
    = k) or sums their exp (MASS=True, goal = top_p as a fraction of their total), and returns a key t such that
    the live keys >= t are exactly those >= key(v). MSB-first radix select over the ordered keys: `prefix` holds
    the bits decided so far, which define the current bucket; each level places every live value at its next 4-bit
    digit inside the bucket (16 above it, -1 below), gets per digit the bucket's count and the F of everything at
    or above that digit in one pass, and keeps the highest non-empty digit that still reaches the goal (the lowest
    non-empty one if rounding left none). A chosen digit with one value ends the search with the lower bits 0.
    """
    digits = tl.arange(0, 16)
    prefix = floor & 0  # uint32 zero
    level = tl.zeros([], dtype=tl.uint32)
    while level < 8:
        shift = 28 - 4 * level
        high = ~((prefix | 0xFFFFFFFF) >> (4 * level))  # the bits decided by earlier levels
        count = tl.zeros([16], dtype=tl.int32)  # live values in the bucket, per digit
        weight = tl.zeros([16], dtype=tl.float32)  # F of the live values at or above each digit of the bucket
        for start in range(0, V, BLOCK):
            offs = start + tl.arange(0, BLOCK)
            zt = tl.load(zt_row + offs, mask=offs < V, other=float("-inf"))
            bits = zt.to(tl.uint32, bitcast=True)
            key = tl.where(bits >= 0x80000000, ~bits, bits | 0x80000000)  # x < y exactly when key(x) < key(y)
            digit = ((key >> shift) & 15).to(tl.int32)
            pos = tl.where((key & high) == prefix, digit, tl.where((key & high) > prefix, 16, -1))
            pos = tl.where((offs < V) & (key >= floor), pos, -1)
            count += tl.sum((pos[:, None] == digits[None, :]).to(tl.int32), axis=0)
            at_or_above = pos[:, None] >= digits[None, :]  # (BLOCK, 16)
            if MASS:
                weight += tl.sum(tl.where(at_or_above, tl.exp(zt)[:, None], 0.0), axis=0)
            else:
                weight += tl.sum(at_or_above.to(tl.float32), axis=0)  # exact: V < 2^24
        if MASS:
            goal = tl.where(level == 0, goal * tl.max(weight, axis=0), goal)  # top_p of the live total
        # score: the digit, ranked reaching first, then lowest non-empty; bit 0 says the digit holds one value
        reach = (count > 0) & (weight >= goal)
        score = tl.where(reach, 32 + 2 * digits, tl.where(count > 0, 30 - 2 * digits, -2))
        best = tl.max(score + (count == 1).to(tl.int32), axis=0)
        d = tl.where(best >= 32, (best - 32) // 2, (31 - best) // 2)
        prefix = prefix | (d.to(tl.uint32) << shift)
        level = tl.where((best & 1) == 1, 8, level + 1)
    return prefix


@triton.jit
def _sample_kernel(
    logits_ptr,  # (B, V) fp32 / fp16 / bf16, unit column stride
    stride_logits,
    zt_ptr,  # (B, V) fp32 scratch: the penalised logits z, then zt = (z - max z) / t
    temperature_ptr,  # (B,) fp32, and so on for each per-row parameter
    top_k_ptr,  # (B,) int64
    top_p_ptr,
    min_p_ptr,
    penalty_ptr,
    prev_ptr,  # (B, L) int64 token history (HAS_PREV)
    stride_prev,
    L,
    noise_ptr,  # (B, V) fp32 U[0, 1) noise (USE_NOISE)
    stride_noise,
    seed_ptr,  # (1,) or (B,) int64 Philox keys (not USE_NOISE)
    stride_seed,  # 0 for one seed shared by the batch, 1 for per-row seeds
    ids_ptr,  # (B,) int64 out
    kept_min_ptr,  # (B,) fp32 out: the smallest kept zt (0 for greedy rows), a test and debugging aid
    flag_ptr,  # (1,) int32, OR-ed with FLAG_* bits
    V,
    HAS_PREV: tl.constexpr,
    USE_NOISE: tl.constexpr,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0)
    t = tl.load(temperature_ptr + row)
    top_k = tl.load(top_k_ptr + row)
    top_p = tl.load(top_p_ptr + row)
    min_p = tl.load(min_p_ptr + row)
    penalty = tl.load(penalty_ptr + row)
    valid = (t >= 0) & (top_k >= 0) & (top_p >= 0) & (top_p <= 1) & (min_p >= 0) & (min_p <= 1) & (penalty > 0)
    flags = tl.where(valid, 0, _FLAG_BAD_PARAM)
    logits_row = logits_ptr + row.to(tl.int64) * stride_logits
    zt_row = zt_ptr + row.to(tl.int64) * V

    # 1. repetition penalty into the scratch
    if HAS_PREV:
        for start in range(0, V, BLOCK):
            offs = start + tl.arange(0, BLOCK)
            x = tl.load(logits_row + offs, mask=offs < V)
            tl.store(zt_row + offs, x.to(tl.float32), mask=offs < V)
        tl.debug_barrier()  # the copy lands before the penalised values
        prev_row = prev_ptr + row.to(tl.int64) * stride_prev
        n_bad = 0
        for start in range(0, L, BLOCK):
            offs = start + tl.arange(0, BLOCK)
            ids = tl.load(prev_row + offs, mask=offs < L, other=-1)
            seen = (ids >= 0) & (ids < V)
            n_bad += tl.sum((ids >= V).to(tl.int32), axis=0)
            x = tl.load(logits_row + ids, mask=seen).to(tl.float32)
            z = tl.where(x > 0, tl.math.div_rn(x, tl.broadcast_to(penalty, x.shape)), x * penalty)
            tl.store(zt_row + ids, z, mask=seen)
        flags |= tl.where(n_bad > 0, _FLAG_BAD_TOKEN, 0)
        tl.debug_barrier()
        z_row = zt_row
    else:
        z_row = logits_row

    # 2. max, greedy argmax (the first index on ties) and flags
    z_max = float("-inf")
    arg = 0
    worst = 0  # 2: a NaN was seen (reported first, as the reference does), 1: a +inf
    for start in range(0, V, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        z = tl.load(z_row + offs, mask=offs < V, other=float("-inf")).to(tl.float32)
        worst = tl.maximum(worst, tl.max(tl.where(z != z, 2, tl.where(z == float("inf"), 1, 0)), axis=0))
        block_max, block_arg = tl.max(tl.where(z == z, z, float("-inf")), axis=0, return_indices=True)
        if block_max > z_max:
            z_max = block_max
            arg = start + block_arg
    flags |= tl.where(worst == 2, _FLAG_NAN, tl.where(worst == 1, _FLAG_POSINF, 0))
    flags |= tl.where(z_max == float("-inf"), _FLAG_NEG_INF_ROW, 0)
    if flags != 0:
        tl.atomic_or(flag_ptr, flags)
    if t == 0:
        tl.store(ids_ptr + row, arg.to(tl.int64))
        tl.store(kept_min_ptr + row, 0.0)
        return

    # 3. zt = (z - max) / t, exactly the reference's values; NaN (from NaN or inf logits, flagged) becomes -inf
    for start in range(0, V, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        z = tl.load(z_row + offs, mask=offs < V).to(tl.float32)
        zt = tl.math.div_rn(z - z_max, tl.broadcast_to(t, z.shape))
        zt = tl.where(zt == zt, zt, float("-inf"))
        zt = tl.where(zt == 0, 0.0, zt)  # -0 (a -0 logit at the max) orders like +0
        tl.store(zt_row + offs, zt, mask=offs < V)
    tl.debug_barrier()

    # 4. thresholds as ordered keys: top-k, then top-p over the top-k survivors; back to an fp32 threshold
    floor = tl.full([], 0x007FFFFF, tl.uint32)  # the key of -inf; lower keys are NaN bit patterns
    if (top_k > 0) & (top_k < V):
        floor = tl.maximum(floor, _search(zt_row, V, floor, top_k.to(tl.float32), False, BLOCK))
    if top_p < 1:
        floor = tl.maximum(floor, _search(zt_row, V, floor, top_p, True, BLOCK))
    threshold = tl.where(floor >= 0x80000000, floor ^ 0x80000000, ~floor).to(tl.float32, bitcast=True)

    # 5. the exponential race over the kept tokens
    if USE_NOISE:
        noise_row = noise_ptr + row.to(tl.int64) * stride_noise
    else:
        seed = tl.load(seed_ptr + row * stride_seed)
        counter = tl.where(stride_seed == 0, row, 0).to(tl.uint32)
    best = -1.0
    best_id = 0
    kept_min = float("inf")
    for start in range(0, V, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        zt = tl.load(zt_row + offs, mask=offs < V, other=float("-inf"))
        e = tl.exp(zt)
        kept = (zt >= threshold) & (e >= min_p) & (e > 0)  # exp(zt) = p / p_max; lanes past V hold -inf
        if tl.max(kept.to(tl.int32), axis=0) > 0:  # Philox only where something is kept
            if USE_NOISE:
                u = tl.load(noise_row + offs, mask=kept, other=0.5)
            else:
                zero = offs.to(tl.uint32) * 0
                r, _, _, _ = tl.philox(seed, offs.to(tl.uint32), zero + counter, zero, zero)
                u = tl.uint_to_uniform_float(r)
            race = tl.where(kept, e / -tl.log(u), -1.0)  # u = 0: E = inf, race 0
            block_best, block_arg = tl.max(race, axis=0, return_indices=True)
            if block_best > best:
                best = block_best
                best_id = start + block_arg
            kept_min = tl.minimum(kept_min, tl.min(tl.where(kept, zt, float("inf")), axis=0))
    tl.store(ids_ptr + row, best_id.to(tl.int64))
    tl.store(kept_min_ptr + row, kept_min)


def _checked(x, name, device, shapes, dtypes):
    """x, contiguous, after checking its device, shape (one of `shapes`) and dtype (one of `dtypes`)."""
    if x.device != device or tuple(x.shape) not in shapes or x.dtype not in dtypes:
        raise ValueError(
            f"sample: {name} must be {' or '.join(map(str, shapes))} {'/'.join(map(str, dtypes))} on {device}, "
            f"got {tuple(x.shape)} {x.dtype} on {x.device}"
        )
    return x.contiguous()


def launch(
    logits,
    temperature,
    top_k,
    top_p,
    min_p,
    repetition_penalty,
    prev_tokens=None,
    *,
    seed=None,
    noise=None,
    nan_flag=None,
):
    """Runs `_sample_kernel` on the op's arguments with either Philox `seed` ((1,) or (B,) int64) or `noise`.

    Returns (ids (B,) int64, kept_min (B,) fp32, flag): kept_min is each row's smallest kept zt = (z - max z) / t
    (0 for greedy rows, +inf for a row with no kept token, which only an error row has), so that the kept set is
    every token with zt >= kept_min and exp(zt) > 0; flag is nan_flag, or a fresh one when nan_flag is None.
    """
    if logits.dim() != 2 or logits.dtype not in _TL_DTYPES or not 1 <= logits.shape[1] < 2**24:
        raise ValueError(
            f"sample: the Triton sampler takes (B, V) fp32, fp16 or bf16 logits with 1 <= V < 2^24, got "
            f"{tuple(logits.shape)} {logits.dtype}"
        )
    B, V = logits.shape
    device = logits.device
    floats, rows = (torch.float32,), [(B,)]
    temperature = _checked(temperature, "temperature", device, rows, floats)
    top_k = _checked(top_k, "top_k", device, rows, (torch.int64,))
    top_p = _checked(top_p, "top_p", device, rows, floats)
    min_p = _checked(min_p, "min_p", device, rows, floats)
    repetition_penalty = _checked(repetition_penalty, "repetition_penalty", device, rows, floats)
    if nan_flag is None:
        nan_flag = torch.zeros(1, dtype=torch.int32, device=device)
    nan_flag = _checked(nan_flag, "nan_flag", device, [(1,)], (torch.int32,))  # (1,): contiguous, never a copy
    ids = torch.empty(B, dtype=torch.int64, device=device)
    kept_min = torch.empty(B, dtype=torch.float32, device=device)
    has_prev = prev_tokens is not None and prev_tokens.numel() > 0
    if has_prev:
        L = prev_tokens.shape[-1]
        prev_tokens = _checked(prev_tokens, "prev_tokens", device, [(B, L)], (torch.int64, torch.int32)).long()
    if noise is not None:
        noise = _checked(noise, "noise", device, [(B, V)], (torch.float32, torch.float16, torch.bfloat16)).float()
    else:
        seed = _checked(seed, "seed", device, [(1,), (B,)], (torch.int64,))
    if B == 0:
        return ids, kept_min, nan_flag
    logits = logits if logits.stride(1) == 1 else logits.contiguous()
    zt = torch.empty(B, V, dtype=torch.float32, device=device)
    _sample_kernel[(B,)](
        logits, logits.stride(0), zt,
        temperature, top_k, top_p, min_p, repetition_penalty,
        *((prev_tokens, prev_tokens.stride(0), L) if has_prev else (ids, 0, 0)),  # ids: a placeholder pointer
        *((noise, noise.stride(0)) if noise is not None else (zt, 0)),
        *((ids, 0) if noise is not None else (seed, int(seed.shape[0] > 1))),
        ids, kept_min, nan_flag, V,
        HAS_PREV=has_prev, USE_NOISE=noise is not None, BLOCK=BLOCK, num_warps=NUM_WARPS,
    )  # fmt: skip
    return ids, kept_min, nan_flag


@register_triton("sample_philox")
def sample_philox(logits, seed, temperature, top_k, top_p, min_p, repetition_penalty, prev_tokens=None, nan_flag=None):
    """Launcher of `fastllm::sample_philox`: ids (B,) int64; without nan_flag, raises on a flagged error."""
    params = (temperature, top_k, top_p, min_p, repetition_penalty, prev_tokens)
    ids, _, flag = launch(logits, *params, seed=seed, nan_flag=nan_flag)
    if nan_flag is None:
        ref.check_flag(flag)  # the caller keeps no flag: one host read per call
    return ids


@register_triton("sample_from_noise")
def sample_from_noise(
    logits, noise, temperature, top_k, top_p, min_p, repetition_penalty, prev_tokens=None, nan_flag=None
):
    """Launcher of `fastllm::sample_from_noise`: ids (B,) int64; without nan_flag, raises on a flagged error."""
    params = (temperature, top_k, top_p, min_p, repetition_penalty, prev_tokens)
    ids, _, flag = launch(logits, *params, noise=noise, nan_flag=nan_flag)
    if nan_flag is None:
        ref.check_flag(flag)
    return ids


def _signature(dtype: str) -> dict[str, str]:
    """Triton types of `_sample_kernel`'s parameters for `dtype` logits."""
    pointers = {"logits_ptr": f"*{dtype}", "top_k_ptr": "*i64", "prev_ptr": "*i64", "seed_ptr": "*i64"}
    pointers |= {"ids_ptr": "*i64", "flag_ptr": "*i32"}
    return {
        p.name: "constexpr" if p.is_constexpr else pointers.get(p.name, "*fp32") if p.name.endswith("_ptr") else "i32"
        for p in _sample_kernel.params
    }


def aot_configs() -> list[AOTConfig]:
    """Every specialisation `launch` can run: logits dtype x token history or not x noise or Philox."""
    return [
        AOTConfig(
            f"sample[{ty},prev={has_prev},noise={use_noise}]",
            _sample_kernel,
            _signature(ty),
            dict(HAS_PREV=has_prev, USE_NOISE=use_noise, BLOCK=BLOCK),
            NUM_WARPS,
        )
        for ty in _TL_DTYPES.values()
        for has_prev in (False, True)
        for use_noise in (False, True)
    ]
