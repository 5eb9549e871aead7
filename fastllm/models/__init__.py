"""fastllm's model layer: one `ModelConfig`, one `Transformer` assembled from blocks chosen by config.

Files: `config.py` (ModelConfig, PRESETS), `layers.py` (norms, RoPE, sinusoidal positions, MLP), `attention.py`
(attention kinds, registry ATTENTION), `cache.py` (KVCache ring buffers, the model-level Cache),
`transformer.py` (Context, Block, registry BLOCKS, Transformer), `mla.py` (the "mla" attention kind and its latent
cache, SWA-MLA), `inl.py` (the "inl" integrator block, INL-LLM). Attention and MLP call `fastllm.kernels` only.

How to add an attention kind (e.g. MLA, in `models/mla.py`):
  1. Add its config fields to ModelConfig (in the marked section) and its presets to PRESETS, with
     `layer_pattern` naming the kind per layer, e.g. ("full", "full", "mla").
  2. Write an nn.Module `(config, layer_idx)` with `forward(x (B, T, d), ctx, cache) -> (B, T, d)` and
     `new_cache(batch, max_seq_len, max_chunk, dtype, device)`; follow the two paths of `Attention.forward`
     (ctx.fresh or no cache: attend over the new tokens and `write_prefill`; else write at ctx.positions and
     decode against the cache with ctx.seqlens). Its layer cache needs `write`/`write_prefill`/`row`
     (see cache.py). Rotary helpers: `layers.rope_cos_sin(ctx.positions, dim, theta)`, `layers.apply_rope`.
  3. Decorate it with `@register_attention("mla")` and import the module below so that it registers.
How to add a block type (e.g. the INL integrator block, in `models/inl.py`): an nn.Module `(config, layer_idx)`
with `forward(x, ctx, cache)` and `new_cache(...)`, registered as `BLOCKS["inl"] = INLBlock`, selected by
`ModelConfig.block = "inl"`. Embedding variants (INL's low-rank embedding) go in `Transformer.__init__`/`embed`,
switched by a config field. Then add the family's checkpoint format in `fastllm/checkpoints/` (see its docstring).
"""

from fastllm.models.attention import ATTENTION as ATTENTION
from fastllm.models.attention import Attention as Attention
from fastllm.models.attention import register_attention as register_attention
from fastllm.models.cache import Cache as Cache
from fastllm.models.cache import KVCache as KVCache
from fastllm.models.config import PRESETS as PRESETS
from fastllm.models.config import ModelConfig as ModelConfig
from fastllm.models.transformer import BLOCKS as BLOCKS
from fastllm.models.transformer import Block as Block
from fastllm.models.transformer import Context as Context
from fastllm.models.transformer import Transformer as Transformer

# Attention kinds and blocks that live in their own files register on import (add their imports here).
# isort: split
from fastllm.models import inl as inl  # registers BLOCKS["inl"]
from fastllm.models import mla as mla  # registers ATTENTION["mla"]
