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


def _check_fast(logits, temperature, top_k, top_p, min_p, repetition_penalty, prev_tokens):
    """`_check` in one pass over the logits and one host read: a row's max is NaN if the row holds a NaN, +inf if
    it holds +inf and -inf if every logit is -inf. Only when something is wrong does `_check` find which."""
    if logits.dim() != 2 or not logits.is_floating_point() or logits.shape[1] == 0:
        return _check(logits, temperature, top_k, top_p, min_p, repetition_penalty, prev_tokens)
    bad = ~torch.isfinite(logits.amax(-1))  # (B,)
    bad = bad | ~(temperature >= 0) | (top_k < 0) | ~((top_p >= 0) & (top_p <= 1)) | ~((min_p >= 0) & (min_p <= 1))
    bad = (bad | ~(repetition_penalty > 0)).any()
    if prev_tokens is not None and prev_tokens.numel():
        bad = bad | (prev_tokens.max() >= logits.shape[1])
    if bool(bad):
        _check(logits, temperature, top_k, top_p, min_p, repetition_penalty, prev_tokens)


def apply_repetition_penalty(z, prev_tokens, penalty):
    """z (B, V): for tokens seen in prev_tokens (B, L) (negative ids are padding), z > 0 -> z / p, else z * p.

    Gathers the L seen logits, penalises them and scatters them into a copy: O(B * L) besides the copy. A token seen
    twice gets the same penalised value written twice, so it is penalised once."""
    if prev_tokens is None or prev_tokens.numel() == 0:
        return z
    prev = prev_tokens.to(device=z.device, dtype=torch.int64)  # (B, L)
    idx = prev.clamp(min=0)  # (B, L) padding points at token 0
    seen = z.gather(1, idx)  # (B, L)
    pen = penalty.to(z.dtype)[:, None]  # (B, 1)
    hit = torch.where(seen > 0, seen / pen, seen * pen)  # (B, L)
    # padding writes token 0's final value: penalised if 0 was really seen, else unchanged
    zero_seen = (prev == 0).any(-1, keepdim=True)  # (B, 1)
    return z.scatter(1, idx, torch.where((prev < 0) & ~zero_seen, seen, hit))  # (B, V)


def _nucleus(ps, top_p):
    """The top-p threshold (R, 1) of probabilities ps (R, C) sorted in descending order: the smallest kept
    probability of the smallest prefix whose mass reaches top_p. The prefix ends before the first token whose mass
    ahead already reaches top_p (a prefix even where fp rounding makes that mass dip by an ulp further on)."""
    before = ps.cumsum(-1) - ps  # (R, C) mass strictly ahead of each sorted token (cumsum adds in fp64, in order)
    inside = (before >= top_p[:, None]).cumsum(-1) == 0  # (R, C)
    inside[:, 0] = True
    return torch.where(inside, ps, torch.ones_like(ps)).amin(-1, keepdim=True)  # (R, 1)


def _normaliser(e):
    """sum(e, -1) (R, 1) added in vocabulary order in fp64 (`cumsum` on the CPU): the fast path adds the same
    non-zero terms in the same order, so it gets the same bits."""
    return e.cumsum(-1)[:, -1:]


def _filter(z, top_k, top_p, min_p):
    """Probabilities (B, V) of the temperature-scaled logits z and the mask of tokens that survive the filters.

    This is the definition; `_candidates` computes the same values on a few candidate tokens per row."""
    V = z.shape[1]
    no_k, no_p = (top_k == 0) | (top_k >= V), top_p >= 1  # (B,) disabled filters
    e = torch.exp(z)  # (B, V) z <= 0: the row max was subtracted
    if bool(no_k.all()) and bool(no_p.all()):  # only min-p: no sort needed
        probs = e / _normaliser(e)  # (B, V)
        return probs, (probs >= min_p[:, None] * probs.amax(-1, keepdim=True)) & (probs > 0)
    desc, order = z.sort(dim=-1, descending=True)  # (B, V)
    kth = desc.gather(1, (top_k.clamp(1, V) - 1)[:, None])  # (B, 1) the k-th largest value
    keep = (z >= kth) | no_k[:, None]  # (B, V) ties with the k-th value are kept
    e = e.masked_fill(~keep, 0)
    probs = e / _normaliser(e)  # (B, V) renormalised over top-k
    ps = probs.gather(1, order)  # (B, V) still descending: exp is monotonic and the masked tail is 0
    keep &= (probs >= _nucleus(ps, top_p)) | no_p[:, None]  # ties with the last token of the prefix are kept
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
    _check_fast(logits, temperature, top_k, top_p, min_p, repetition_penalty, prev_tokens)
    z, zt, greedy = _scaled(logits, temperature, repetition_penalty, prev_tokens)
    probs, keep = _filter(zt, top_k, top_p, min_p)
    probs = torch.where(keep, probs, torch.zeros_like(probs))  # (B, V)
    probs = probs / probs.sum(-1, keepdim=True)
    onehot = torch.nn.functional.one_hot(z.argmax(-1), z.shape[1]).to(probs.dtype)  # (B, V)
    return torch.where(greedy[:, None], onehot, probs)


# ---- the fast path: the same probabilities on a few candidate tokens per row ----------------------------------------

MAX_CANDIDATES = 1024  # the largest top_k (+ 1) the candidate path takes, and its last top-p-only try
TOP_P_CANDIDATES = (256, MAX_CANDIDATES)  # candidates tried for top-p alone, until their mass reaches top_p


def _rows(z, rows):
    return z if rows.shape[0] == z.shape[0] else z[rows]


def _top_k_candidates(z, top_k, top_p, min_p):
    """Rows with 1 <= top_k < V: the top_k + 1 largest z (one past the cut to see ties at it). Exact unless the
    last candidate ties with the k-th value (a tie that may go on past the candidates): `ok` (R,) says which rows
    are. Returns idx, probs, keep (R, C) and ok, with probs and keep equal to `_filter`'s at idx."""
    V = z.shape[1]
    C = min(int(top_k.max()) + 1, V)
    vals, idx = z.topk(C, dim=-1)  # (R, C) descending
    in_k = vals >= vals.gather(1, (top_k - 1)[:, None])  # (R, C) ties with the k-th value are kept
    ok = ~in_k[:, -1] | (C == V)  # (R,) every token past the candidates is below the k-th value
    e = torch.exp(vals).masked_fill(~in_k, 0)  # (R, C)
    probs = e / _normaliser(e.gather(1, idx.argsort(-1)))  # the kept terms in vocabulary order, as `_filter` adds
    keep = in_k & ((probs >= _nucleus(probs, top_p)) | (top_p >= 1)[:, None])
    keep &= probs >= min_p[:, None] * probs.amax(-1, keepdim=True)
    return idx, probs, keep & (probs > 0), ok


def _top_p_candidates(z, top_p, min_p, C):
    """Rows with top-k off and top_p < 1: probabilities over the whole row (one exp and one sum pass), then the C
    most likely tokens. Exact (`ok`) where the top-p prefix ends inside them and the C-th token falls below its
    threshold (so no tie with it is left outside)."""
    e = torch.exp(z)  # (R, V)
    total = _normaliser(e)  # (R, 1)
    C = min(C, z.shape[1])
    idx = z.topk(C, dim=-1).indices  # (R, C)
    probs = e.gather(1, idx) / total  # (R, C) descending
    thresh = _nucleus(probs, top_p)  # (R, 1)
    ok = (probs[:, -1:] < thresh).squeeze(1) | (C == z.shape[1])  # (R,)
    keep = (probs >= thresh) & (probs >= min_p[:, None] * probs.amax(-1, keepdim=True))
    return idx, probs, keep & (probs > 0), ok


def _plan(zt, top_k, top_p, min_p, active):
    """The active rows (B,) bool split into groups (rows (R,), idx (R, C) or None for whole rows, probs, keep),
    probs and keep equal to `_filter`'s at idx. The candidate paths take the rows they can do exactly; the rest
    (top_k > MAX_CANDIDATES, min-p or no filter alone, boundary ties past the candidates) go through `_filter`."""
    V = zt.shape[1]
    no_k = (top_k == 0) | (top_k >= V)
    groups, rest = [], []
    k_rows = torch.nonzero(active & ~no_k & (top_k < MAX_CANDIDATES)).flatten()
    p_rows = torch.nonzero(active & no_k & (top_p < 1)).flatten()
    rest.append(torch.nonzero(active & ~no_k & (top_k >= MAX_CANDIDATES) | active & no_k & (top_p >= 1)).flatten())
    if k_rows.numel():
        idx, probs, keep, ok = _top_k_candidates(_rows(zt, k_rows), top_k[k_rows], top_p[k_rows], min_p[k_rows])
        groups.append((k_rows[ok], idx[ok], probs[ok], keep[ok]))
        rest.append(k_rows[~ok])
    for C in TOP_P_CANDIDATES:
        if not p_rows.numel():
            break
        idx, probs, keep, ok = _top_p_candidates(_rows(zt, p_rows), top_p[p_rows], min_p[p_rows], C)
        groups.append((p_rows[ok], idx[ok], probs[ok], keep[ok]))
        p_rows = p_rows[~ok]
    rest = torch.cat(rest + [p_rows])
    if rest.numel():
        rest = rest.sort().values
        groups.append((rest, None, *_filter(_rows(zt, rest), top_k[rest], top_p[rest], min_p[rest])))
    return [g for g in groups if g[0].numel()]


def _draw(logits, uniform, temperature, top_k, top_p, min_p, repetition_penalty, prev_tokens):
    """Ids (B,): greedy rows take the argmax of the penalised logits, the others race p / E over their group's
    tokens. uniform(rows (R,), idx (R, C) or None) gives the U[0, 1) noise (R, C), or (R, V) for idx None."""
    z, zt, greedy = _scaled(logits, temperature, repetition_penalty, prev_tokens)
    ids = z.argmax(-1)  # (B,) the first index on ties; kept for the greedy rows
    if bool(greedy.all()):
        return ids
    V = z.shape[1]
    for rows, idx, probs, keep in _plan(zt, top_k, top_p, min_p, ~greedy):
        race = probs / -torch.log(uniform(rows, idx).to(probs.dtype))  # p / Exp(1); u = 0 gives E = inf, i.e. 0
        race = torch.where(keep, race, torch.full_like(race, -1.0))  # filtered tokens never win
        if idx is None:
            ids[rows] = race.argmax(-1)  # the first index on ties
        else:  # the smallest vocabulary index among the winners, as argmax over the whole row picks
            best = race.amax(-1, keepdim=True)
            ids[rows] = torch.where(race == best, idx, torch.full_like(idx, V)).amin(-1)
    return ids


def sample_from_noise(
    logits, noise, temperature, top_k, top_p, min_p, repetition_penalty, prev_tokens=None, nan_flag=None
):
    """Next-token ids (B,) int64 from logits (B, V) and uniform noise (B, V) (None only if every row is greedy).

    temperature, top_p, min_p, repetition_penalty are (B,) float tensors, top_k a (B,) integer tensor; prev_tokens
    (B, L) int64 or None. Semantics: see `fastllm.kernels.sample`. Invalid inputs raise ValueError here, so
    nan_flag (the Triton kernel's error flag) is never written. Only the noise at each row's candidate tokens is
    read; the ids are those of `_filter` over the whole row with the same noise.
    """
    _check_fast(logits, temperature, top_k, top_p, min_p, repetition_penalty, prev_tokens)
    if not bool((temperature == 0).all()) and (noise is None or noise.shape != logits.shape):
        raise ValueError(f"sample: rows with temperature > 0 need uniform noise of shape {tuple(logits.shape)}")

    def uniform(rows, idx):
        u = _rows(noise, rows)
        return u if idx is None else u.gather(1, idx)

    return _draw(logits, uniform, temperature, top_k, top_p, min_p, repetition_penalty, prev_tokens)


def sample_philox(logits, seed, temperature, top_k, top_p, min_p, repetition_penalty, prev_tokens=None, nan_flag=None):
    """`sample_from_noise` with noise from int64 seeds ((1,) or (B,)): torch generators seeded with them draw
    U[0, 1) noise for each row's candidate tokens only (its whole row where it takes the general path). One seed
    for the batch draws group by group; (B,) seeds give each row its own generator, so that a row's draw depends on
    its seed and logits only. Deterministic for a given seed.

    The Triton kernel draws Philox noise from the same seeds instead: same distribution, other ids. nan_flag is
    never written (invalid inputs raise).
    """
    _check_fast(logits, temperature, top_k, top_p, min_p, repetition_penalty, prev_tokens)
    V, device = logits.shape[1], logits.device
    gens = [] if bool((temperature == 0).all()) else [torch.Generator(device).manual_seed(s) for s in seed.tolist()]

    def uniform(rows, idx):
        n = V if idx is None else idx.shape[1]
        if len(gens) == 1:
            return torch.rand((rows.shape[0], n), generator=gens[0], device=device)  # (R, n)
        return torch.stack([torch.rand(n, generator=gens[r], device=device) for r in rows.tolist()])  # (R, n)

    return _draw(logits, uniform, temperature, top_k, top_p, min_p, repetition_penalty, prev_tokens)


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
