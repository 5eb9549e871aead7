"""MLA decode: what the latent cache saves, and how fast it is read.

Every bench reports the bytes of cache one decode step reads per layer: the latent cache (R + Dr values per token,
shared by all heads) against a standard MHA cache with the same model dims (K and V per head: H (Dn + Dr + Dv)
values per token), for two model shapes: the SWA-MLA 262M preset (H=16, R=256) and DeepSeek-V2 (H=128, R=512).

- `test_mla_decode_cpu`: fp32 on the CPU. Provider "reference" is the absorbed decode (q_nope W_UK, `mla_decode`
  over the latent rows, o_latent W_UV^T) with the eager reference, "fastllm" the same with the C++ decode attention
  kernel (`fastllm.kernels.cpu.mla_decode`, what CPU calls of the op run), "torch" decompresses K and V per head and
  attends (`mla_decode_naive`); each is checked against the other form first, and extra_info gets the speedup of
  the absorbed forms over "torch" and of "fastllm" over "reference".
- `test_mla_decode_cuda`: provider "triton" (the split-KV kernel, bf16, pages of 64 tokens) against "reference" on
  a CUDA device, after an equivalence check; extra_info gets the achieved GB/s of latent cache read and its fraction
  of the device's DRAM bandwidth (from the memory clock and bus width). Skipped without CUDA.

Run with `pytest benches/bench_mla.py --benchmark`.
"""

import functools

import pytest
import torch
import torch.nn.functional as F

from fastllm.kernels import cpu
from fastllm.kernels import reference as ref
from fastllm.kernels.triton import mla

MODELS = {  # per-head dims of the un-absorbed attention and the latent dims
    "swa-mla-262m": dict(H=16, R=256, Dr=64, Dn=128, Dv=128),
    "deepseek-v2": dict(H=128, R=512, Dr=64, Dn=128, Dv=128),
}
_CPU_MEDIANS: dict[tuple, dict[str, float]] = {}  # (model, B, L) -> provider -> median seconds


def cache_bytes(dims: dict, tokens: int, element_size: int) -> dict:
    """Bytes one decode step reads per layer from the latent cache and from an MHA cache of the same model."""
    latent = tokens * (dims["R"] + dims["Dr"]) * element_size
    mha = tokens * dims["H"] * (dims["Dn"] + dims["Dr"] + dims["Dv"]) * element_size
    return dict(bytes_per_step=latent, mha_bytes_per_step=mha, cache_saving=round(mha / latent, 1))


def decode_inputs(dims: dict, B: int, L: int, dtype, device, generator):
    """Un-absorbed queries, up-projections and a latent cache (B, L, R + Dr) of L tokens per row."""
    H, R, Dr, Dn, Dv = (dims[k] for k in ("H", "R", "Dr", "Dn", "Dv"))

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=generator) * scale).to(device=device, dtype=dtype)

    q_nope, q_rope = rand(B, 1, H, Dn), rand(B, 1, H, Dr)
    w_uk, w_uv = rand(H, Dn, R, scale=R**-0.5), rand(H, Dv, R, scale=R**-0.5)
    kv = rand(B, L, R + Dr)
    return q_nope, q_rope, w_uk, w_uv, kv, (Dn + Dr) ** -0.5


def absorbed_decode(q_nope, q_rope, w_uk, w_uv, kv, seqlens, scale, decode=ref.mla_decode):
    """The model's decode step: W_UK into the query, attend over the latent rows (`decode`: the reference or the
    C++ kernel), W_UV out. (B, 1, H, Dv)."""
    q = torch.cat([torch.einsum("bthd,hdr->bthr", q_nope, w_uk), q_rope], dim=-1)  # (B, 1, H, R + Dr)
    o_lat, _ = decode(q, kv, seqlens, kv_lora_rank=w_uk.shape[-1], softmax_scale=scale)
    return torch.einsum("bthr,hvr->bthv", o_lat, w_uv)


def cpp_decode(q, kv, seqlens, *, kv_lora_rank, softmax_scale):
    return cpu.mla_decode(q, kv, seqlens, kv_lora_rank, softmax_scale, None)


def naive_decode(q_nope, q_rope, w_uk, w_uv, kv, seqlens, scale):
    o, _ = ref.mla_decode_naive(q_nope, q_rope, kv, seqlens, w_uk=w_uk, w_uv=w_uv, softmax_scale=scale)
    return o


@pytest.mark.parametrize("provider", ["reference", "fastllm", "torch"])
@pytest.mark.parametrize("model,B,L", [("swa-mla-262m", 4, 1024), ("deepseek-v2", 2, 256)])
def test_mla_decode_cpu(bench, model, B, L, provider):
    dims = MODELS[model]
    args = decode_inputs(dims, B, L, torch.float32, "cpu", torch.Generator().manual_seed(L))
    seqlens = torch.full((B,), L, dtype=torch.int32)
    fn = {
        "reference": absorbed_decode,
        "fastllm": functools.partial(absorbed_decode, decode=cpp_decode),  # the C++ decode attention kernel
        "torch": naive_decode,
    }[provider]
    other = naive_decode if provider != "torch" else absorbed_decode
    got = fn(*args[:5], seqlens, args[5])
    torch.testing.assert_close(got, other(*args[:5], seqlens, args[5]), atol=1e-4, rtol=1e-4)
    bench(fn, *args[:5], seqlens, args[5], rounds=3)
    H, R = dims["H"], dims["R"]
    bench.info(provider=provider, model=model, shape=f"B={B} L={L} H={H} R={R}", dtype="float32")
    bench.extra_info.update(cache_bytes(dims, B * L, 4), threads=torch.get_num_threads())
    if bench.median_s is None:
        return
    medians = _CPU_MEDIANS.setdefault((model, B, L), {})
    medians[provider] = bench.median_s
    if provider != "torch" and "torch" in medians:
        bench.extra_info["speedup_absorbed_vs_naive"] = round(medians["torch"] / medians[provider], 2)
    if provider == "fastllm" and "reference" in medians:
        bench.extra_info["speedup_vs_reference"] = round(medians["reference"] / medians[provider], 2)
    ms = round(1e3 * bench.median_s, 2)
    bench.row(bench="mla_decode_cpu", provider=provider, model=model, B=B, L=L, ms=ms, **cache_bytes(dims, B * L, 4))


def dram_bandwidth(device) -> float:
    """Theoretical DRAM bytes/s of a CUDA device: double data rate x bus width x memory clock."""
    props = torch.cuda.get_device_properties(device)
    return 2 * props.memory_bus_width / 8 * props.memory_clock_rate * 1e3


def paged(kv: torch.Tensor, page_size: int, generator) -> tuple[torch.Tensor, torch.Tensor]:
    """The contiguous cache (B, L, D) as a pool of pages in a random order, and its block table (B, L / page_size)."""
    B, L, D = kv.shape
    pages = L // page_size
    perm = torch.randperm(B * pages, generator=generator).to(kv.device)
    pool = torch.empty(B * pages, page_size, D, dtype=kv.dtype, device=kv.device)
    pool[perm] = kv.reshape(B * pages, page_size, D)
    return pool, perm.view(B, pages).to(torch.int32)


@pytest.mark.parametrize("provider", ["triton", "reference"])
@pytest.mark.parametrize("model", list(MODELS))
@pytest.mark.parametrize("B,L", [(1, 8192), (16, 4096), (128, 1024)])
def test_mla_decode_cuda(bench, model, B, L, provider):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device (the kernel's GB/s); on the CPU it runs only under the interpreter")
    dims = MODELS[model]
    g = torch.Generator().manual_seed(B * L)
    q_nope, q_rope, w_uk, w_uv, kv, scale = decode_inputs(dims, B, L, torch.bfloat16, "cuda", g)
    q = torch.cat([torch.einsum("bthd,hdr->bthr", q_nope, w_uk), q_rope], dim=-1)  # (B, 1, H, R + Dr)
    pool, table = paged(kv, 64, g)
    seqlens = torch.full((B,), L, dtype=torch.int32, device="cuda")
    R = dims["R"]
    kwargs = dict(kv_lora_rank=R, softmax_scale=scale, block_table=table)
    impl = mla.mla_decode if provider == "triton" else ref.mla_decode
    o, lse = impl(q, pool, seqlens, **kwargs)
    want, want_lse = ref.mla_decode(q.float(), pool.float(), seqlens, **kwargs)
    assert F.cosine_similarity(o.double().flatten(), want.double().flatten(), dim=0) > 0.99999
    torch.testing.assert_close(lse, want_lse, atol=1e-3, rtol=0)

    reps = 20 if provider == "triton" else 1  # back-to-back launches, so that launch overhead does not dominate

    def steps():
        for _ in range(reps):
            impl(q, pool, seqlens, **kwargs)
        torch.cuda.synchronize()

    bench(steps, rounds=10 if provider == "triton" else 3)
    bytes_info = cache_bytes(dims, B * L, 2)
    splits = mla.num_splits_for(B, dims["H"], L, torch.cuda.get_device_properties(0).multi_processor_count)
    bench.info(provider=provider, model=model, shape=f"B={B} L={L} H={dims['H']} R={R} page=64", dtype="bfloat16")
    bench.extra_info.update(bytes_info, num_splits=splits)
    if bench.median_s is None:
        return
    step_s = bench.median_s / reps
    gbps = bytes_info["bytes_per_step"] / step_s / 1e9
    fraction = gbps * 1e9 / dram_bandwidth(0)
    bench.extra_info.update(us_per_step=round(1e6 * step_s, 2), gb_per_s=round(gbps, 1), bw_fraction=round(fraction, 3))
    bench.row(
        bench="mla_decode_cuda",
        provider=provider,
        model=model,
        B=B,
        L=L,
        us=round(1e6 * step_s, 2),
        gb_per_s=round(gbps, 1),
        bw_fraction=round(fraction, 3),
        splits=splits,
    )
