"""The Triton fused sampler (fastllm.kernels.triton.sampling) against the eager reference, under TRITON_INTERPRET=1.

Exact checks: with the same noise the kernel returns the reference's ids; its kept set (exported as each row's
smallest kept zt) is the reference's `sampling_probs(...) > 0`, ties, -inf and tiny / huge top_k and top_p included;
greedy rows are the argmax bit for bit; with a seed the kernel's Philox noise is the one a NumPy Philox4x32-10
computes from the documented key and counters. Statistical checks: draws over many rows follow the reference
probabilities (chi-square). Plus the error flag, no host sync on the Triton path, torch.compile and the engine.

The interpreter runs one program (row) at a time at ~0.1 s per pass over V, so shapes stay small.
"""

import math

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import fastllm.kernels as K
from fastllm import engine
from fastllm.kernels import _dispatch
from fastllm.kernels import reference as R
from fastllm.kernels.reference.sampling import FLAG_BAD_PARAM, FLAG_NAN, apply_repetition_penalty
from fastllm.kernels.triton import sampling as S
from fastllm.models import ModelConfig, Transformer

pytestmark = pytest.mark.triton

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def rows(B, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, repetition_penalty=1.0):
    """The (B,) parameter tensors the ops take, from scalars or per-row lists."""

    def col(v, dtype):
        return torch.as_tensor(v, dtype=dtype).expand(B).contiguous()

    return (
        col(temperature, torch.float32),
        col(top_k, torch.int64),
        col(top_p, torch.float32),
        col(min_p, torch.float32),
        col(repetition_penalty, torch.float32),
    )


def scaled(logits, params, prev):
    """zt = (penalised logits - row max) / t, computed as the reference computes it (fp32)."""
    t, _, _, _, pen = params
    z = apply_repetition_penalty(logits.float(), prev, pen)
    return (z - z.amax(-1, keepdim=True)) / torch.where(t == 0, 1.0, t)[:, None]


def check_against_reference(logits, params, prev=None, seed=0):
    """Kernel with noise vs reference with the same noise: the same ids and the same kept set on every row."""
    noise = torch.rand(logits.shape, generator=torch.Generator().manual_seed(seed))
    ids, kept_min, flag = S.launch(logits, *params, prev, noise=noise)
    assert flag.item() == 0
    assert torch.equal(ids, R.sample_from_noise(logits, noise, *params, prev))
    greedy = params[0] == 0
    want = R.sampling_probs(logits, *params, prev) > 0  # (B, V)
    got = scaled(logits, params, prev) >= kept_min[:, None]  # the kernel's kept set is {zt >= its smallest kept zt}
    for b in torch.nonzero(~greedy).flatten().tolist():
        assert torch.equal(got[b], want[b]), f"row {b}: kept {got[b].sum()} tokens, the reference {want[b].sum()}"
    return ids, want


def philox_uniform(seed: int, c0: np.ndarray, c1: np.ndarray) -> torch.Tensor:
    """U[0, 1) as triton.language.rand makes it from Philox4x32-10 with key = seed, counter = (c0, c1, 0, 0)."""
    mask = np.uint64(0xFFFFFFFF)
    c0, c1 = c0.astype(np.uint64), c1.astype(np.uint64)
    c2, c3 = np.zeros_like(c0), np.zeros_like(c0)
    k0, k1 = np.uint64(seed & 0xFFFFFFFF), np.uint64(seed >> 32)
    for _ in range(10):
        p0, p2 = np.uint64(0xD2511F53) * c0, np.uint64(0xCD9E8D57) * c2  # exact: 32 x 32 bits fit in 64
        c0, c1, c2, c3 = (p2 >> np.uint64(32)) ^ c1 ^ k0, p2 & mask, (p0 >> np.uint64(32)) ^ c3 ^ k1, p0 & mask
        k0, k1 = (k0 + np.uint64(0x9E3779B9)) & mask, (k1 + np.uint64(0xBB67AE85)) & mask
    x = c0.astype(np.uint32).view(np.int32)
    x = np.where(x < 0, ~x, x)
    return torch.from_numpy(x.astype(np.float32) * np.float32(4.6566127342e-10))


# ---- the kept set and the ids, exactly ---------------------------------------------------------------------------


PER_ROW = dict(  # every filter alone and together, off in each way, at its extremes; kept: 1500 36 1 9 235 1 20 37
    temperature=[1.0, 0.7, 1.0, 0.8, 2.0, 1.0, 1.0, 1.3],
    top_k=[0, 50, 5, 200, 10_000, 3, 1500, 37],
    top_p=[1.0, 0.9, 0.0, 0.95, 0.5, 0.999, 0.3, 1.0],
    min_p=[0.0, 0.0, 0.05, 0.2, 0.0, 1.0, 0.0, 0.0],
    repetition_penalty=[1.0, 1.3, 0.8, 1.0, 2.0, 1.2, 1.0, 1.5],
)


@pytest.mark.parametrize("dtype", DTYPES)
def test_kept_set_and_ids_match_reference(dtype):
    torch.manual_seed(0)
    B, V = 8, 1500
    logits = (torch.randn(B, V) * 2).to(dtype)
    prev = torch.randint(-1, V, (B, 37))
    prev[:, :5] = prev[:, 5:10]  # duplicates are penalised once
    check_against_reference(logits, rows(B, **PER_ROW), prev)


def test_ties_at_the_boundaries_are_kept():
    torch.manual_seed(1)
    B, V = 6, 1200
    logits = torch.randn(B, V).mul(2).round()  # ~10 distinct values: every cut falls inside a group of ties
    params = rows(B, top_k=[1, 7, 40, 0, 0, 300], top_p=[1.0, 1.0, 1.0, 0.3, 0.0, 0.6], min_p=[0.0] * 5 + [0.1])
    _, want = check_against_reference(logits, params)
    top = logits == logits.amax(-1, keepdim=True)
    assert torch.equal(want[0], top[0]) and torch.equal(want[4], top[4])  # top_k=1 and top_p=0: all ties of the max
    kth = logits[1].sort(descending=True).values[6]
    assert want[1].sum() > 7 and torch.equal(want[1], logits[1] >= kth)


def test_inf_and_equal_logits():
    B, V = 5, 1100
    logits = torch.randn(B, V)
    logits[0, ::2] = -math.inf  # half the vocabulary masked out
    logits[1] = 0.25  # all equal: every token kept, uniform
    logits[2] = -math.inf
    logits[2, 777] = -3.0  # a single finite token
    logits[3, :100] = torch.arange(100.0) * 10  # a huge spread: the tail's probability underflows to 0
    logits[4, 5], logits[4, 900] = -0.0, 0.0  # -0 and +0 tie at the max
    logits[4, logits[4] > 0] = -1.0
    params = rows(B, top_k=[20, 1, 3, 0, 1], top_p=[1.0, 0.5, 1.0, 1.0, 1.0])
    ids, want = check_against_reference(logits, params)
    assert want[0].sum() == 20 and (want[0, ::2] == 0).all()
    assert want[1].all() and ids[2] == 777 and want[4].sum() == 2


def test_vocab_50257_single_row():
    torch.manual_seed(2)
    logits = torch.randn(1, 50257) * 2
    prev = torch.randint(0, 50257, (1, 64))
    for params in (rows(1, 0.8, 40, 0.9, 0.02, 1.2), rows(1, 1.0, 0, 0.7)):
        check_against_reference(logits, params, prev)


def test_greedy_is_argmax_bit_for_bit():
    torch.manual_seed(3)
    B, V = 8, 2100
    for dtype in DTYPES:
        logits = (torch.randn(B, V) * 4).to(dtype)
        logits[0, [7, 1500]] = 50.0  # ties: the first index wins
        logits[1] = -math.inf
        logits[1, [3, 2000]] = -1.0
        logits[2, 1025] = logits[2].max()  # a tie across blocks of the kernel
        prev = torch.randint(-1, V, (B, 20))
        prev[3, 0] = logits[3].float().argmax()  # the penalty moves the argmax
        pen = torch.tensor([1.0, 1.0, 1.0, 3.0, 0.5, 1.5, 1.0, 2.0])
        ids = K.sample(logits, temperature=0.0, repetition_penalty=pen, prev_tokens=prev)
        z = apply_repetition_penalty(logits.float(), prev, pen)
        assert torch.equal(ids, z.argmax(-1)), dtype
        assert ids[0] == 7 and ids[1] == 3 and ids[3] != logits[3].float().argmax()


# ---- Philox: the documented stream, reproducibility, statistics --------------------------------------------------


@pytest.mark.parametrize("per_row_seeds", [False, True])
def test_philox_stream_is_the_documented_one(per_row_seeds):
    torch.manual_seed(4)
    B, V = 4, 700
    logits = torch.randn(B, V) * 2
    params = rows(B, temperature=[1.0, 0.8, 1.2, 1.0], top_k=[0, 30, 0, 5], top_p=[1.0, 0.9, 0.8, 1.0])
    seeds = [2**40 + 17, 5, 2**61 + 3, 99] if per_row_seeds else [2**33 + 12345]
    tokens = np.arange(V)
    noise = torch.stack(
        [philox_uniform(seeds[b], tokens, np.zeros(V)) for b in range(B)]
        if per_row_seeds
        else [philox_uniform(seeds[0], tokens, np.full(V, b)) for b in range(B)]
    )
    ids, _, _ = S.launch(logits, *params, seed=torch.tensor(seeds))
    assert torch.equal(ids, R.sample_from_noise(logits, noise, *params))


def test_seeds_reproduce_and_differ():
    torch.manual_seed(5)
    logits = torch.randn(6, 300)

    def draw(**kw):
        return K.sample(logits, temperature=0.9, **kw)

    g = torch.Generator().manual_seed(7)
    a, b = draw(generator=g), draw(generator=g)
    assert torch.equal(a, draw(generator=torch.Generator().manual_seed(7))) and not torch.equal(a, b)
    assert torch.equal(draw(seed=11), draw(seed=torch.tensor([11])))
    assert len({tuple(draw(seed=s).tolist()) for s in range(6)}) == 6
    # per-row seeds: a row's draw depends on its own seed and logits only, not on its place in the batch
    seeds = torch.tensor([3, 1, 4, 1, 5, 9])
    perm = torch.tensor([5, 0, 3, 1, 4, 2])
    ids = K.sample(logits, seed=seeds)
    assert torch.equal(K.sample(logits[perm], seed=seeds[perm]), ids[perm])


def chi_square_p(counts: torch.Tensor, probs: torch.Tensor) -> float:
    """p-value of Pearson's chi-square test of `counts` against `probs` (over the tokens with probs > 0)."""
    keep = probs > 0
    expected = probs[keep] * counts.sum()
    stat = ((counts[keep] - expected) ** 2 / expected).sum()
    df = keep.sum() - 1
    return torch.special.gammaincc(df / 2, stat / 2).item()


def test_draws_follow_the_reference_distribution():
    torch.manual_seed(6)
    V, N = 10, 600  # N rows of the same logits: one launch, N Philox streams
    logits = torch.randn(1, V) * 1.5
    prev = torch.tensor([[2, 2, 7, -1]])
    kw = dict(temperature=0.8, min_p=0.02, repetition_penalty=1.4)
    probs = R.sampling_probs(logits, *rows(1, **kw), prev)[0].double()
    ids = K.sample(logits.expand(N, V), prev_tokens=prev.expand(N, -1), seed=123, **kw)
    counts = torch.bincount(ids, minlength=V).double()
    assert (counts[probs == 0] == 0).all()
    assert chi_square_p(counts, probs) > 1e-3
    assert torch.nn.functional.cosine_similarity(counts / N, probs, dim=0) > 0.99


def test_draws_never_leave_the_filtered_support():
    torch.manual_seed(7)
    V, N = 40, 48
    logits = torch.randn(1, V) * 2
    kw = dict(temperature=1.2, top_k=12, top_p=0.8, min_p=0.05)
    probs = R.sampling_probs(logits, *rows(1, **kw))[0]
    ids = K.sample(logits.expand(N, V), seed=9, **kw)
    assert set(ids.tolist()) <= set(torch.nonzero(probs).flatten().tolist())
    assert len(set(ids.tolist())) > 1


def test_per_row_parameters_mix_greedy_and_sampled_rows():
    torch.manual_seed(8)
    B, V = 6, 400
    logits = torch.randn(B, V) * 3
    params = rows(B, [0.0, 0.9, 0.0, 1.1, 0.5, 0.0], [0, 20, 5, 0, 3, 0], [1.0, 0.9, 0.5, 1.0, 1.0, 0.1])
    greedy = params[0] == 0
    probs = R.sampling_probs(logits, *params)
    for s in range(3):
        ids = K.sample(logits, temperature=params[0], top_k=params[1], top_p=params[2], seed=s)
        assert torch.equal(ids[greedy], logits.argmax(-1)[greedy])
        assert (probs.gather(1, ids[:, None]) > 0).all()


def test_edge_cases_have_defined_results():
    torch.manual_seed(9)
    logits = torch.randn(4, 500)
    logits[3, [10, 20]] = 9.0  # two tied maxima
    off = K.sample(logits, seed=5)
    assert torch.equal(K.sample(logits, top_k=500, seed=5), off)  # top_k >= V is off
    assert torch.equal(K.sample(logits, top_k=10**6, top_p=1.0, seed=5), off)
    assert torch.equal(K.sample(logits[:3], top_p=1e-6, seed=5), logits[:3].argmax(-1))  # only the argmax
    assert {K.sample(logits[3:], top_k=1, seed=s).item() for s in range(12)} == {10, 20}  # the tie is kept


# ---- errors: the flag, not a sync --------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")  # the interpreter's inf - inf on the +inf row
def test_error_flag_accumulates_and_raises_at_the_check():
    logits = torch.randn(3, 200)
    bad = logits.clone()
    bad[1, 7] = math.nan
    flag = torch.zeros(1, dtype=torch.int32)
    ids = K.sample(bad, top_k=5, nan_flag=flag, seed=1)  # no raise: the caller checks when it syncs
    assert ((ids >= 0) & (ids < 200)).all() and flag.item() == FLAG_NAN
    K.sample(logits, nan_flag=flag, seed=2)
    with pytest.raises(ValueError, match="logits contain NaN"):
        K.check_sample_flag(flag)
    with pytest.raises(ValueError, match="logits contain NaN"):
        K.sample(bad)  # no flag given: checked once per call
    inf = logits.clone()
    inf[0, 3] = math.inf
    inf[2] = -math.inf
    with pytest.raises(ValueError, match=r"\+inf; every logit is -inf in a row"):
        K.sample(inf, noise=torch.rand(3, 200))
    with pytest.raises(ValueError, match="top_p"):
        K.sample(logits, top_p=torch.tensor([0.5, 1.5, 0.5]))
    with pytest.raises(ValueError, match="prev_tokens holds an id >= the vocabulary size"):
        K.sample(logits, repetition_penalty=1.2, prev_tokens=torch.tensor([[1], [200], [3]]), temperature=0)
    flag.zero_()
    K.sample(logits, temperature=-1.0, nan_flag=flag)
    assert flag.item() == FLAG_BAD_PARAM
    K.check_sample_flag(torch.zeros(1, dtype=torch.int32))  # a clean flag is silent


def test_launcher_validates_its_arguments():
    logits, params = torch.randn(2, 50), rows(2)
    with pytest.raises(ValueError, match="fp32, fp16 or bf16 logits"):
        S.launch(logits.double(), *params, seed=torch.tensor([1]))
    with pytest.raises(ValueError, match="seed must be"):
        S.launch(logits, *params, seed=torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="top_k must be"):
        S.launch(logits, *params[:1], params[1].int(), *params[2:], seed=torch.tensor([1]))
    with pytest.raises(ValueError, match="nan_flag must be"):
        K.sample(logits, nan_flag=torch.zeros(1, dtype=torch.int64))


# ---- no host sync on the Triton path -----------------------------------------------------------------------------


class CountSyncs(TorchDispatchMode):
    """Counts device-to-host scalar reads (`.item()`, `bool(tensor)`, `.tolist()` all reach these aten ops)."""

    SYNCS = (torch.ops.aten._local_scalar_dense.default, torch.ops.aten.item.default)

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += func in self.SYNCS
        return func(*args, **(kwargs or {}))


@pytest.fixture
def count_syncs(monkeypatch):
    """A CountSyncs mode that also sees inside the Triton ops (a mode sees a custom op as one call, so every
    registered launcher is wrapped to run under it too)."""
    mode = CountSyncs()
    for op in list(_dispatch.triton_ops()):
        launcher = _dispatch.triton_ops()[op]

        def counted(*args, launcher=launcher, **kwargs):
            with mode:
                return launcher(*args, **kwargs)

        monkeypatch.setitem(_dispatch._TRITON_OPS, op, counted)
    return mode


def test_triton_path_does_not_sync(count_syncs):
    logits, prev = torch.randn(2, 300), torch.randint(-1, 300, (2, 9))
    flag = torch.zeros(1, dtype=torch.int32)
    with count_syncs:
        K.sample(logits, top_k=20, top_p=0.9, repetition_penalty=1.1, prev_tokens=prev, nan_flag=flag)
        g = torch.Generator().manual_seed(0)
        K.sample(logits, temperature=torch.tensor([0.0, 1.0]), generator=g, nan_flag=flag)
        K.sample(logits, noise=torch.rand(2, 300), nan_flag=flag)
    assert count_syncs.count == 0
    with count_syncs:
        K.sample(logits)  # without a flag: the one check per call
    assert count_syncs.count == 1


def sampler_only_on_triton(monkeypatch):
    """Auto dispatch with only the sampling ops registered: the Triton sampler, every other op on the reference."""
    launchers = _dispatch.triton_ops()
    monkeypatch.delenv("FASTLLM_KERNELS")
    monkeypatch.setattr(_dispatch, "_TRITON_OPS", {op: launchers[op] for op in ("sample_philox", "sample_from_noise")})


def tiny_model():
    torch.manual_seed(0)
    cfg = ModelConfig.from_name("gpt2", n_layer=1, d_model=16, n_head=2, d_ff=32, vocab_size=61, max_seq_len=32)
    return Transformer(cfg).eval()


def test_engine_sampling_step_does_not_sync(monkeypatch, count_syncs):
    sampler_only_on_triton(monkeypatch)
    state = engine.DecodeState([torch.tensor([1, 2, 3]), torch.tensor([4])], 4, None, "cpu", None, 0)
    logits = torch.randn(2, 61)
    sampling = engine.SamplingParams(temperature=0.8, top_k=10, top_p=0.9, repetition_penalty=1.2)
    with count_syncs:
        state.append(engine.sample_next(logits, state, sampling, torch.Generator().manual_seed(0)))
    assert count_syncs.count == 0


def test_engine_decode_loop_syncs_only_every_sync_every_steps(count_syncs):
    """The whole decode loop (sliding-window ring, MLA latent decode, GLU, sampler) on the Triton path reads the
    device only at the sync points: no host sync per token on CUDA (here: Triton under the interpreter)."""
    torch.manual_seed(0)
    cfg = ModelConfig.from_name(
        "swa-mla-262m", n_layer=3, d_model=32, n_head=4, d_ff=48, vocab_size=97, max_seq_len=64, window=6,
        kv_lora_rank=12, qk_nope_head_dim=8, qk_rope_head_dim=4, v_head_dim=6,
    )  # fmt: skip
    model = Transformer(cfg).eval()
    sampling = engine.SamplingParams(temperature=0.8, top_k=10, repetition_penalty=1.1)
    # an EOS id the model never emits (past the vocabulary): every row runs all 20 steps
    for eos, reads in ((None, 1), (torch.tensor([1000]), 2)):
        state = engine.DecodeState([torch.tensor([1, 2, 3, 4, 5, 6, 7])], 20, None, "cpu", eos, 0)
        cache = model.new_cache(1, 7 + 19, max_chunk=1)
        logits = engine.prefill(model, [state.tokens[0, :7]], cache)
        count_syncs.count = 0
        with count_syncs:
            steps = engine.decode_n_tokens(
                model, cache, state, logits, 20, sampling, generator=torch.Generator().manual_seed(0), sync_every=8
            )
        assert steps == 20
        # steps 8 and 16: the NaN flag, and with EOS ids the all-done check; the final flag
        assert count_syncs.count == 2 * reads + 1


def test_engine_raises_on_nan_logits_at_a_sync_point(monkeypatch):
    sampler_only_on_triton(monkeypatch)
    model = tiny_model()
    with torch.no_grad():
        model.lm_head.weight[5] = math.nan
    steps = []
    with pytest.raises(ValueError, match="logits contain NaN"):
        engine.generate(model, [[1, 2]], 8, on_step=lambda i, ids: steps.append(i), sync_every=3)
    assert steps == [0, 1]  # flagged at step 0, raised at the first sync point (step 2), before its ids go out
    out, _ = engine.generate(tiny_model(), [[1, 2]], 4, sampling=engine.SamplingParams(top_k=5))
    assert len(out[0]) == 4


# ---- torch.compile -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
def test_torch_compile_fullgraph(backend):
    torch._dynamo.reset()
    logits, seed = torch.randn(3, 120), torch.tensor([42])

    def step(logits, seed, flag):
        seeded = K.sample(logits, temperature=0.7, top_k=10, seed=seed, nan_flag=flag)
        return seeded, K.sample(logits, top_p=0.9), K.sample(logits, temperature=0.0)

    flag = torch.zeros(1, dtype=torch.int32)
    got = torch.compile(step, fullgraph=True, backend=backend)(logits, seed, flag)
    want = step(logits, seed, flag)
    assert torch.equal(got[0], want[0]) and torch.equal(got[2], want[2]) and flag.item() == 0
    assert got[1].shape == (3,) and ((got[1] >= 0) & (got[1] < 120)).all()
