"""ModelConfig: one dataclass describes every family fastllm runs; named presets and `ModelConfig.from_name`.

Fields choose the pieces a `Transformer` is assembled from (norm, positions, attention kind per layer, MLP kind,
biases, tied embeddings). Derived fields (`n_kv_head`, `head_dim`, `d_ff`) are filled in `__post_init__` when left
None, so build variants with `from_name(name, **overrides)` (derivation runs on the final values) rather than
`dataclasses.replace` on an already derived config.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

NORMS = ("layernorm", "rmsnorm")
POSITIONS = ("learned", "sinusoidal", "rope", "none")
ROPE_STYLES = ("half", "interleaved")  # GPT-NeoX/Llama halves | GPT-J pairs (2i, 2i+1)
MLPS = ("gelu", "gelu_tanh", "glu")
GLU_LAYOUTS = ("gate_first", "gate_second", "separate")
GLU_ACTIVATIONS = ("silu", "gelu", "gelu_tanh")


@dataclass
class ModelConfig:
    family: str = "gpt2"  # upstream family: picks the default tokenizer of a saved model; informational otherwise
    vocab_size: int = 50257
    n_layer: int = 12
    d_model: int = 768
    n_head: int = 12
    n_kv_head: int | None = None  # None: n_head (MHA); fewer for GQA/MQA
    head_dim: int | None = None  # None: d_model // n_head
    d_ff: int | None = None  # None: 4 * d_model (the width of one GLU half for mlp="glu")
    max_seq_len: int = 1024  # rows of a learned position table; the default KV-cache length
    # ---- norms (every block is pre-norm) ----
    norm: str = "layernorm"  # layernorm | rmsnorm (rmsnorm computes in fp32, weight only)
    norm_eps: float = 1e-5
    norm_bias: bool = True  # layernorm with a bias term
    final_norm: bool = True  # False: Identity before lm_head (llm-scratch v1 with rmsnorm)
    # ---- positions ----
    position: str = "learned"  # learned | sinusoidal (added to the embeddings) | rope (q, k) | none
    rope_style: str = "half"
    rope_theta: float = 10000.0
    rope_dim: int | None = None  # rotate the first rope_dim dims of a head (partial rotary); None: all
    rel_bias: int = 0  # R > 0: per-layer learned (n_head, R) table added at the clipped distance min(p - j, R - 1)
    # ---- attention ----
    attention: str = "full"  # kind of every layer (key of models.attention.ATTENTION) unless layer_pattern is set
    layer_pattern: tuple[str, ...] = ()  # kinds cycled over the layers, e.g. ("sliding", "sliding", "mla")
    window: int | None = None  # "sliding" layers: keys p - window < j <= p (the window counts the token itself)
    sink_tokens: int = 0  # "sliding" layers: the first sink_tokens positions stay visible (attention sinks)
    qkv_bias: bool = True
    out_bias: bool = True
    attn_scale: float | None = None  # softmax scale; None: 1 / sqrt(head_dim)
    # ---- MLP ----
    mlp: str = "gelu"  # gelu (erf) | gelu_tanh | glu
    glu_activation: str = "silu"
    glu_layout: str = "gate_first"  # packed [gate | up], packed [up | gate], or separate gate / up matrices
    mlp_bias: bool = True
    # ---- embeddings, head, block ----
    tie_embeddings: bool = True  # lm_head.weight is tok_emb.weight
    lm_head_bias: bool = False
    block: str = "prenorm"  # block type, key of models.transformer.BLOCKS
    # ---- MLA layers (models/mla.py), DeepSeek-V2 names ----
    kv_lora_rank: int = 0  # R: width of the cached latent c_kv
    q_lora_rank: int = 0  # 0: direct wq; > 0: wq_b(LayerNorm(wq_a x))
    qk_nope_head_dim: int = 128  # Dn
    qk_rope_head_dim: int = 64  # Dr: the rotary part, one key per token shared by all heads
    v_head_dim: int = 128  # Dv
    mla_rope_by_head: bool = True  # SWA-MLA quirk 2: q_pe rotated by head index, not position (see models/mla.py)
    # ---- INL integrator block (models/inl.py) and low-rank embedding ----
    embed_rank: int = 0  # r > 0: tok_emb is (V, r), projected up by tok_proj (d, r) (INL low-rank embedding)
    inl_iterations: int = 0  # T integrator steps per layer
    inl_group_size: int = 64  # dims sharing one equilibrium offset (hierarchical mu)
    inl_early_stop: bool = False  # eval-mode adaptive stopping (the checkpoint's inl.inl.* key variant)
    inl_stop_threshold: float = 1e-3  # per-token L2 norm of the state change
    extra: dict = field(default_factory=dict)  # free-form family notes kept through save/load (not read here)

    def __post_init__(self):
        self.layer_pattern = tuple(self.layer_pattern)
        if self.n_kv_head is None:
            self.n_kv_head = self.n_head
        if self.head_dim is None:
            self.head_dim = self.d_model // self.n_head
        if self.d_ff is None:
            self.d_ff = 4 * self.d_model
        for name, allowed in (
            ("norm", NORMS),
            ("position", POSITIONS),
            ("rope_style", ROPE_STYLES),
            ("mlp", MLPS),
            ("glu_layout", GLU_LAYOUTS),
            ("glu_activation", GLU_ACTIVATIONS),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(f"ModelConfig.{name}={getattr(self, name)!r}; expected one of {allowed}")
        if self.n_head % self.n_kv_head:
            raise ValueError(f"ModelConfig: n_head={self.n_head} is not a multiple of n_kv_head={self.n_kv_head}")
        rd = self.rope_dim or self.head_dim
        if self.position == "rope" and (rd % 2 or rd > self.head_dim):
            raise ValueError(f"ModelConfig: rope_dim={rd} must be even and <= head_dim={self.head_dim}")
        if "sliding" in self.layer_kinds() and (self.window is None or self.window < 1):
            raise ValueError("ModelConfig: sliding layers need window >= 1")
        if "mla" in self.layer_kinds() and (self.kv_lora_rank < 1 or self.qk_rope_head_dim % 2):
            raise ValueError("ModelConfig: mla layers need kv_lora_rank >= 1 and an even qk_rope_head_dim")
        if self.embed_rank and self.tie_embeddings:
            raise ValueError("ModelConfig: a low-rank embedding (embed_rank > 0) cannot be tied to the (V, d) head")

    def layer_kinds(self) -> list[str]:
        """Attention kind of each layer: `layer_pattern` cycled, or `attention` everywhere."""
        pattern = self.layer_pattern or (self.attention,)
        return [pattern[i % len(pattern)] for i in range(self.n_layer)]

    @property
    def rotary_dim(self) -> int:
        return self.rope_dim or self.head_dim

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["layer_pattern"] = list(self.layer_pattern)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"ModelConfig: unknown fields {unknown}")
        return cls(**d)

    @classmethod
    def from_name(cls, name: str, **overrides) -> ModelConfig:
        """A preset by name (see PRESETS), with field overrides, e.g. `from_name("gpt2", n_layer=2)`."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; known: {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})


_GPT2 = dict(family="gpt2", vocab_size=50257, max_seq_len=1024, mlp="gelu_tanh", norm_eps=1e-5)

# SWA-MLA (Orolol/swamla, Oct-Nov 2025), train_swa_mla.sh defaults: 12 layers cycling 2 "SWA" : 1 MLA. Quirk 1:
# the SWA layers ran full causal (the window mask was built, then discarded), so they are "full" here; the
# intended window (keys i - j <= 256, i.e. 257 counting the token itself) + 4 sinks is the opt-in
# layer_pattern=("sliding", "sliding", "mla"). RMSNorm eps 1e-6, interleaved RoPE, SiLU-GLU with [value | gate]
# halves of width 4C, no biases, tied head; MLA R=256, Dn=128, Dr=64, Dv=128, direct wq.
_SWA_MLA = dict(
    family="swa-mla",
    vocab_size=50257,
    n_layer=12,
    d_model=1024,
    n_head=16,
    max_seq_len=2048,
    norm="rmsnorm",
    norm_eps=1e-6,
    position="rope",
    rope_style="interleaved",
    layer_pattern=("full", "full", "mla"),
    window=257,
    sink_tokens=4,
    qkv_bias=False,
    out_bias=False,
    mlp="glu",
    glu_layout="gate_second",
    mlp_bias=False,
    kv_lora_rank=256,
)

# Sizes follow SEEDS.md: the size the upstream README describes (or its base config).
PRESETS: dict[str, dict] = {
    # HF / OpenAI GPT-2: learned positions, LayerNorm, tanh-GELU, biases everywhere, tied head.
    "gpt2": dict(_GPT2, n_layer=12, d_model=768, n_head=12),
    "gpt2-medium": dict(_GPT2, n_layer=24, d_model=1024, n_head=16),
    # Raschka layout (aurelien2247/llm): the GPT-2 architecture with qkv_bias=False and an untied head.
    "gpt-124m": dict(
        _GPT2, family="gpt-124m", n_layer=12, d_model=768, n_head=12, qkv_bias=False, tie_embeddings=False
    ),
    # L1 (juliuspleunes4/L1) "l1-gpu-compatible" of the README: 155.8M with the 1783-char vocabulary, erf GELU.
    "l1": dict(
        family="l1",
        vocab_size=1783,
        n_layer=12,
        d_model=1024,
        n_head=16,
        d_ff=4096,
        max_seq_len=1024,
        mlp="gelu",
        tie_embeddings=False,
    ),
    # llm-scratch v1 (base.yaml): learned positions + clipped relative bias (129 causal distances), SiLU-GLU with
    # separate fc1 (gate) / fc2 (up), qkv without bias, lm_head with bias, tied.
    "llm-scratch-v1": dict(
        family="llm-scratch",
        vocab_size=32000,
        n_layer=8,
        d_model=512,
        n_head=8,
        max_seq_len=256,
        rel_bias=129,
        qkv_bias=False,
        mlp="glu",
        glu_layout="separate",
        lm_head_bias=True,
    ),
    # llm-scratch v2 (base.yaml): interleaved RoPE, packed [value | gate] GLU; local_window 256 = max_seq_len so
    # the window never bites (base.400m.yaml's window 1024 over 2048 tokens maps to attention="sliding").
    "llm-scratch-v2": dict(
        family="llm-scratch",
        vocab_size=32000,
        n_layer=8,
        d_model=512,
        n_head=8,
        max_seq_len=256,
        position="rope",
        rope_style="interleaved",
        qkv_bias=False,
        mlp="glu",
        glu_layout="gate_second",
    ),
    "swa-mla-262m": dict(_SWA_MLA, extra={"chat_format": "transcript"}),
    # the instruct fine-tune adds <|im_start|> <|im_end|> (V 50259); the resize untied wte and lm_head. ChatML.
    "swa-mla-262m-instruct": dict(_SWA_MLA, vocab_size=50259, tie_embeddings=False, extra={"chat_format": "chatml"}),
    # INL-LLM 1B (pacific-prime777): low-rank embedding r = d/8, sinusoidal positions, packed-qkv MHA with biases,
    # 10 integrator steps per layer with eval-mode early stopping, erf-GELU FFN, untied head; V = 50257 + 4 added.
    "inl-1b": dict(
        family="inl",
        vocab_size=50261,
        n_layer=28,
        d_model=1600,
        n_head=25,
        d_ff=6400,
        max_seq_len=2048,
        position="sinusoidal",
        mlp="gelu",
        tie_embeddings=False,
        block="inl",
        embed_rank=200,
        inl_iterations=10,
        inl_early_stop=True,
        extra={"chat_format": "inl"},
    ),
}
