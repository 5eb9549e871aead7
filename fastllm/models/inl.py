"""The INL-LLM block (pacific-prime777/ARKITEKTURE_TRANSFORMER_ADL): attention, then a per-token integrator loop.

Block (pre-norm, three residual branches; LayerNorms eps 1e-5):

    ctx = attn(attn_norm(x));  x = x + ctx
    s = inl_norm(x);  v = 0                                   # state starts at the normalised stream
    for t in 0..T-1:
        a, b, g = split(ctrl_out(relu(ctrl_in([ctx, s, v]))), d)     # 3d -> 64 -> 3d controller
        v = sigmoid(a) * v - softplus(b) * (s - mu)                  # mu = mu_global + offsets[i // group_size]
        s = s + dt * sigmoid(g) * v                                  # dt = 0.1
    x = x + s                                                 # adds the final STATE, not a delta
    x = x + mlp(mlp_norm(x))                                  # erf-GELU FFN

The integrator's context is the attention output (before the residual). Attention is the packed-qkv MHA of
models/attention.py ("full" kind: in_proj rows q | k | v, biases, scale 1/sqrt(d/H)).

Early stopping (eval mode, checkpoints saved with use_adaptive_stopping, `config.inl_early_stop`): from step t = 3
on, a token whose state moved by less than the threshold (L2 over d) is marked converged, and stays marked (the
flag is sticky upstream, even if a later step moves it again); once every token of the call is marked, this step is
accepted and the loop stops. All tokens keep updating until then. In train mode all T steps run.

Cache caveat: the decision is global over the tokens of one forward call, B x T of them. A full recompute decides
over the whole prefix; cached decoding decides over the new tokens only (prefill over the prompt). With the
threshold reached the two can differ, so a cached generation then matches upstream (which re-runs the full prefix
every step) only up to that decision; when the stop never fires (as with random weights, where it needs
|v| < 1e-2) they agree exactly. The integrator itself is per token, so the KV cache is otherwise exact.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fastllm.models.attention import ATTENTION
from fastllm.models.config import ModelConfig
from fastllm.models.layers import MLP, Linear, make_norm
from fastllm.models.transformer import BLOCKS

CONTROLLER_DIM = 64  # hard-coded hidden width of the upstream controller
DT = 0.1  # hard-coded time step
MIN_STEPS = 3  # upstream min_iterations: the convergence check starts at step index 3


class Integrator(nn.Module):
    """Hierarchical-equilibrium integrator: T damped second-order steps per token, gates from a tiny MLP."""

    keep_float = ("ctrl_in",)  # fastllm.quant: forward splits its weight

    def __init__(self, config: ModelConfig):
        super().__init__()
        d = config.d_model
        self.d, self.steps, self.group = d, config.inl_iterations, config.inl_group_size
        self.early_stop, self.threshold = config.inl_early_stop, config.inl_stop_threshold
        self.mu_global = nn.Parameter(torch.zeros(()))
        self.mu_offsets = nn.Parameter(torch.zeros(-(-d // self.group)))  # ceil(d / group) offsets
        self.ctrl_in = Linear(3 * d, CONTROLLER_DIM)  # input order [ctx, s, v]
        self.ctrl_out = Linear(CONTROLLER_DIM, 3 * d)  # output order [alpha, beta, gate]
        self.last_steps = 0  # steps the last forward ran (early stopping shows here)

    def mu(self) -> torch.Tensor:
        return self.mu_global + self.mu_offsets.repeat_interleave(self.group)[: self.d]  # (d,)

    def forward(self, c: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """Final state (N, d) for contexts c (N, d) and initial states s (N, d); N tokens, independent."""
        d, mu = self.d, self.mu()
        w_c, w_sv = self.ctrl_in.weight.split([d, 2 * d], dim=1)  # (64, d), (64, 2d)
        # the context part of the first layer is the same at every step: one (N, d) x (d, 64) matmul, not T
        pre = F.linear(c, w_c, self.ctrl_in.bias)  # (N, 64)
        v = torch.zeros_like(s)  # (N, d)
        stop = self.early_stop and not self.training
        converged = torch.zeros(s.shape[0], dtype=torch.bool, device=s.device)  # (N,)
        self.last_steps = self.steps
        for t in range(self.steps):
            h = F.relu(pre + F.linear(torch.cat([s, v], dim=-1), w_sv))  # (N, 64)
            a, b, g = self.ctrl_out(h).split(d, dim=-1)  # (N, d) each
            v = torch.sigmoid(a) * v - F.softplus(b) * (s - mu)  # (N, d)
            s_new = s + DT * torch.sigmoid(g) * v  # (N, d)
            if stop and t >= MIN_STEPS:
                converged |= torch.linalg.vector_norm(s_new - s, dim=-1) < self.threshold  # (N,) sticky
                if bool(converged.all()):  # host sync: the stop is data-dependent (graph break under compile)
                    self.last_steps = t + 1
                    return s_new
            s = s_new
        return s


class INLBlock(nn.Module):
    """attention -> integrator -> FFN, each pre-normed with a LayerNorm; parameters `attn_norm`, `attn`, `inl_norm`,
    `inl`, `mlp_norm`, `mlp`."""

    def __init__(self, config: ModelConfig, layer_idx: int):
        super().__init__()
        self.attn_norm = make_norm(config)
        self.attn = ATTENTION[config.layer_kinds()[layer_idx]](config, layer_idx)
        self.inl_norm = make_norm(config)
        self.inl = Integrator(config)
        self.mlp_norm = make_norm(config)
        self.mlp = MLP(config)

    def new_cache(self, batch, max_seq_len, max_chunk, dtype, device):
        return self.attn.new_cache(batch, max_seq_len, max_chunk, dtype, device)

    def forward(self, x: torch.Tensor, ctx, cache=None) -> torch.Tensor:
        B, T, d = x.shape
        c = self.attn(self.attn_norm(x), ctx, cache)  # (B, T, d)
        x = x + c
        # flattened to (B T, d): the early-stop decision spans every token of the call, as upstream
        s = self.inl(c.reshape(B * T, d), self.inl_norm(x).reshape(B * T, d)).view(B, T, d)
        x = x + s  # (B, T, d)
        return x + self.mlp(self.mlp_norm(x))  # (B, T, d)


BLOCKS["inl"] = INLBlock
