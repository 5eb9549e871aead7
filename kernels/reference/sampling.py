"""Eager reference for next-token sampling: penalty, temperature, top-k, top-p, min-p, then one draw per row.

The draw is an exponential race: with u ~ U[0, 1) i.i.d. per (row, token) and E = -log(u) ~ Exp(1),
argmax_i p_i / E_i is distributed exactly as Categorical(p / sum p) (the same trick as Gumbel-max), so a draw needs
no normalisation, no cumulative sum and no host sync. `torch.library` custom ops cannot take a `torch.Generator`,
so the randomness enters as a tensor, in one of two forms:

- `sample_from_noise`: explicit U[0, 1) noise (B, V); the reference and every kernel turn the same noise into the
  same ids.
- `sample_philox`: int64 seeds, (1,) for the batch or (B,) one per row, which the public `sample` draws from the
  caller's generator on the logits' device (`seeds_for`, no host sync). The Triton kernel turns them into Philox
  noise in registers; this reference seeds torch generators with them (`seeded_noise`), so the two paths agree in
  distribution but not id for id.
"""

import torch

_NEG_INF = float("-inf")

# Bits of the int32 flag that the Triton sampler ORs in where the reference raises (it cannot raise without a host
# sync); `check_flag` turns them into the reference's errors.
FLAG_NAN, FLAG_POSINF, FLAG_NEG_INF_ROW, FLAG_BAD_PARAM, FLAG_BAD_TOKEN = 1, 2, 4, 8, 16
FLAG_MESSAGES = {
    FLAG_NAN: "logits contain NaN",
    FLAG_POSINF: "logits contain +inf",
    FLAG_NEG_INF_ROW: "every logit is -inf in a row",
    FLAG_BAD_PARAM: "a row's temperature, top_k, top_p, min_p or repetition_penalty is out of range (temperature "
    ">= 0, top_k >= 0, top_p and min_p in [0, 1], repetition_penalty > 0)",
    FLAG_BAD_TOKEN: "prev_tokens holds an id >= the vocabulary size",
}


def check_flag(flag: torch.Tensor) -> None:
    """Raises the ValueError that `sample(..., nan_flag=flag)` calls recorded in `flag` (NaN or +inf logits, a row
    of -inf, a parameter out of range, an id >= V in prev_tokens), naming each; nothing if none did. One host read.
    """
    bits = int(flag.item())
    if bits:
        raise ValueError("sample: " + "; ".join(msg for bit, msg in FLAG_MESSAGES.items() if bits & bit))


def uniform_noise(logits: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """U[0, 1) noise (B, V) fp32 for `sample_from_noise`, drawn from `generator` (the global RNG when None)."""
    return torch.rand(logits.shape, generator=generator, dtype=torch.float32, device=logits.device)  # (B, V)


def seeds_for(logits: torch.Tensor, seed=None, generator: torch.Generator | None = None) -> torch.Tensor:
    """The int64 seeds `sample_philox` takes, on logits' device: `seed` as given (an int, or an integer (1,) or (B,)
    tensor: one seed per row), else a fresh (1,) seed drawn from `generator` (the global RNG when None) on the
    device itself, so that nothing waits for the host."""
    B, device = logits.shape[0], logits.device
    if seed is None:
        return torch.randint(0, 2**62, (1,), generator=generator, dtype=torch.int64, device=device)  # (1,)
    if isinstance(seed, int):
        return torch.tensor([seed], dtype=torch.int64, device=device)  # (1,)
    if seed.dim() != 1 or seed.shape[0] not in (1, B) or seed.is_floating_point() or seed.dtype == torch.bool:
        raise ValueError(
            f"sample: seed must be an int or an integer (1,) or ({B},) tensor, got {tuple(seed.shape)} {seed.dtype}"
        )
    return seed.to(device=device, dtype=torch.int64)


def seeded_noise(logits: torch.Tensor, seed: torch.Tensor) -> torch.Tensor:
    """U[0, 1) noise (B, V) from int64 seeds: one torch generator for a (1,) seed, one per row for (B,) seeds (a row's
    noise then depends on its seed only). Reads the seeds on the host."""
    seeds = seed.tolist()
    if len(seeds) == 1:
        return uniform_noise(logits, torch.Generator(logits.device).manual_seed(seeds[0]))
    rows = [
        uniform_noise(logits[b : b + 1], torch.Generator(logits.device).manual_seed(s)) for b, s in enumerate(seeds)
    ]
    return torch.cat(rows)  # (B, V)


def per_row(value, B: int, dtype: torch.dtype, device: torch.device, name: str) -> torch.Tensor:
    """A scalar, a 0-d tensor or a (B,) tensor as a (B,) tensor of `dtype` on `device`."""
    if isinstance(value, torch.Tensor):
        if value.dim() == 0:
            return value.to(device=device, dtype=dtype).expand(B)
        if value.shape != (B,):
            raise ValueError(f"sample: {name} must be a scalar or a ({B},) tensor, got shape {tuple(value.shape)}")
        return value.to(device=device, dtype=dtype)
    return torch.full((B,), value, dtype=dtype, device=device)


def _check(logits, temperature, top_k, top_p, min_p, repetition_penalty, prev_tokens):
    def bad_rows(m):
        return torch.nonzero(m).flatten().tolist()[:8]

    if logits.dim() != 2 or not logits.is_floating_point():
        raise ValueError(f"sample: logits must be a float (B, V) tensor, got {tuple(logits.shape)} {logits.dtype}")
    if torch.isnan(logits).any():
        raise ValueError(f"sample: logits contain NaN (rows {bad_rows(torch.isnan(logits).any(-1))})")
    if torch.isposinf(logits).any():
        raise ValueError(f"sample: logits contain +inf (rows {bad_rows(torch.isposinf(logits).any(-1))})")
    if (logits == _NEG_INF).all(-1).any():
        raise ValueError(f"sample: every logit is -inf in rows {bad_rows((logits == _NEG_INF).all(-1))}")
    checks = (
        ("temperature", ~(temperature >= 0), ">= 0"),
        ("top_k", top_k < 0, ">= 0"),
        ("top_p", ~((top_p >= 0) & (top_p <= 1)), "in [0, 1]"),
        ("min_p", ~((min_p >= 0) & (min_p <= 1)), "in [0, 1]"),
        ("repetition_penalty", ~(repetition_penalty > 0), "> 0"),
    )
    for name, bad, want in checks:
        if bad.any():
            raise ValueError(f"sample: {name} must be {want} (rows {bad_rows(bad)})")
    if prev_tokens is not None and prev_tokens.numel() and int(prev_tokens.max()) >= logits.shape[1]:
        raise ValueError(f"sample: prev_tokens holds id {int(prev_tokens.max())} >= vocabulary size {logits.shape[1]}")


def apply_repetition_penalty(z, prev_tokens, penalty):
    """z (B, V): for tokens seen in prev_tokens (B, L) (negative ids are padding), z > 0 -> z / p, else z * p."""
    if prev_tokens is None or prev_tokens.numel() == 0:
        return z
    prev = prev_tokens.to(device=z.device, dtype=torch.int64)  # (B, L)
    seen = torch.zeros(z.shape, dtype=torch.int32, device=z.device)  # (B, V)
    seen = seen.scatter_add_(1, prev.clamp(min=0), (prev >= 0).to(torch.int32)) > 0  # (B, V) each token once
    pen = penalty.to(z.dtype)[:, None]  # (B, 1)
    return torch.where(seen, torch.where(z > 0, z / pen, z * pen), z)  # (B, V)


def _filter(z, top_k, top_p, min_p):
    """Probabilities (B, V) of the temperature-scaled logits z and the mask of tokens that survive the filters."""
    V = z.shape[1]
    no_k, no_p = (top_k == 0) | (top_k >= V), top_p >= 1  # (B,) disabled filters
    if bool(no_k.all()) and bool(no_p.all()):  # only min-p: no sort needed
        probs = torch.softmax(z, dim=-1)  # (B, V)
        return probs, (probs >= min_p[:, None] * probs.amax(-1, keepdim=True)) & (probs > 0)
    desc, order = z.sort(dim=-1, descending=True)  # (B, V)
    kth = desc.gather(1, (top_k.clamp(1, V) - 1)[:, None])  # (B, 1) the k-th largest value
    keep = (z >= kth) | no_k[:, None]  # (B, V) ties with the k-th value are kept
    probs = torch.softmax(z.masked_fill(~keep, _NEG_INF), dim=-1)  # (B, V) renormalised over top-k
    ps = probs.gather(1, order)  # (B, V) still descending: softmax is monotonic and the masked tail is 0
    before = ps.cumsum(-1) - ps  # (B, V) mass strictly ahead of each sorted token
    inside = before < top_p[:, None]  # (B, V) the smallest prefix whose mass reaches top_p
    inside[:, 0] = True
    thresh = torch.where(inside, ps, torch.ones_like(ps)).amin(-1, keepdim=True)  # (B, 1)
    keep &= (probs >= thresh) | no_p[:, None]  # ties with the last token of the prefix are kept
    keep &= probs >= min_p[:, None] * probs.amax(-1, keepdim=True)  # (B, V) min-p relative to the top token
    return probs, keep & (probs > 0)


def _scaled(logits, temperature, repetition_penalty, prev_tokens):
    dt = torch.float64 if logits.dtype == torch.float64 else torch.float32
    z = apply_repetition_penalty(logits.to(dt), prev_tokens, repetition_penalty)  # (B, V)
    greedy = temperature == 0  # (B,)
    t = torch.where(greedy, torch.ones_like(temperature), temperature).to(dt)[:, None]  # (B, 1)
    # subtract the row max first so that a tiny temperature gives -inf, never inf - inf
    return z, (z - z.amax(-1, keepdim=True)) / t, greedy


def sampling_probs(logits, temperature, top_k, top_p, min_p, repetition_penalty, prev_tokens=None):
    """The distribution (B, V) that `sample_from_noise` draws from (one-hot on the argmax for temperature 0 rows).

    All parameters are per-row (B,) tensors as in `sample_from_noise`.
    """
    _check(logits, temperature, top_k, top_p, min_p, repetition_penalty, prev_tokens)
    z, zt, greedy = _scaled(logits, temperature, repetition_penalty, prev_tokens)
    probs, keep = _filter(zt, top_k, top_p, min_p)
    probs = torch.where(keep, probs, torch.zeros_like(probs))  # (B, V)
    probs = probs / probs.sum(-1, keepdim=True)
    onehot = torch.nn.functional.one_hot(z.argmax(-1), z.shape[1]).to(probs.dtype)  # (B, V)
    return torch.where(greedy[:, None], onehot, probs)


def sample_from_noise(
    logits, noise, temperature, top_k, top_p, min_p, repetition_penalty, prev_tokens=None, nan_flag=None
):
    """Next-token ids (B,) int64 from logits (B, V) and uniform noise (B, V) (None only if every row is greedy).

    temperature, top_p, min_p, repetition_penalty are (B,) float tensors, top_k a (B,) integer tensor; prev_tokens
    (B, L) int64 or None. Semantics: see `fastllm.kernels.sample`. Invalid inputs raise ValueError here, so
    nan_flag (the Triton kernel's error flag) is never written.
    """
    _check(logits, temperature, top_k, top_p, min_p, repetition_penalty, prev_tokens)
    z, zt, greedy = _scaled(logits, temperature, repetition_penalty, prev_tokens)
    ids_greedy = z.argmax(-1)  # (B,) the first index on ties
    if bool(greedy.all()):
        return ids_greedy
    if noise is None or noise.shape != logits.shape:
        raise ValueError(f"sample: rows with temperature > 0 need uniform noise of shape {tuple(logits.shape)}")
    probs, keep = _filter(zt, top_k, top_p, min_p)
    race = probs / -torch.log(noise.to(probs.dtype))  # (B, V) p / Exp(1); u = 0 gives E = inf, i.e. 0
    ids = torch.where(keep, race, torch.full_like(race, -1.0)).argmax(-1)  # (B,) filtered tokens never win
    return torch.where(greedy, ids_greedy, ids)


def sample_philox(logits, seed, temperature, top_k, top_p, min_p, repetition_penalty, prev_tokens=None, nan_flag=None):
    """`sample_from_noise` with the noise made from int64 seeds ((1,) or (B,)) by `seeded_noise`.

    The Triton kernel draws Philox noise from the same seeds instead: same distribution, other ids. nan_flag is
    never written (invalid inputs raise).
    """
    noise = None if bool((temperature == 0).all()) else seeded_noise(logits, seed)
    return sample_from_noise(logits, noise, temperature, top_k, top_p, min_p, repetition_penalty, prev_tokens)


def sample(
    logits,
    *,
    temperature=1.0,
    top_k=0,
    top_p=1.0,
    min_p=0.0,
    repetition_penalty=1.0,
    prev_tokens=None,
    generator=None,
    noise=None,
    seed=None,
):
    """Reference of `fastllm.kernels.sample` (same arguments; on the reference path, the same ids for the same
    generator state, seed or noise)."""
    B, device = logits.shape[0], logits.device
    params = (
        per_row(temperature, B, torch.float32, device, "temperature"),
        per_row(top_k, B, torch.int64, device, "top_k"),
        per_row(top_p, B, torch.float32, device, "top_p"),
        per_row(min_p, B, torch.float32, device, "min_p"),
        per_row(repetition_penalty, B, torch.float32, device, "repetition_penalty"),
    )
    if noise is not None:
        return sample_from_noise(logits, noise, *params, prev_tokens)
    if seed is None and isinstance(temperature, (int, float)) and temperature == 0:
        seed = torch.zeros(1, dtype=torch.int64, device=device)  # greedy: leave the generator alone
    return sample_philox(logits, seeds_for(logits, seed, generator), *params, prev_tokens)
