"""A decoder-only transformer, one code path from a 1M-parameter test model to a 100M+ one.

Pre-norm blocks (RMSNorm), causal self-attention through
``torch.nn.functional.scaled_dot_product_attention(is_causal=True)`` with rotary positions,
a SwiGLU MLP, and the output projection tied to the input embedding. Rotary positions hold
no parameters, so the context length is a training choice and not part of the tensor spec:
the same preset gives the same names and shapes at any ``seq_len``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

BYTE_VOCAB = 256
"""Byte-level vocabulary: every byte string is text to the model, no tokenizer to ship."""

MAX_CONTEXT = 2048
"""The longest context any preset is trained or sampled with."""

INIT_STD = 0.02
"""GPT-2's initialisation scale; residual output projections are further scaled by
1/sqrt(2 * n_layers) so the residual stream's variance does not grow with depth."""


@dataclass(frozen=True)
class TransformerConfig:
    """The shape of a model: every tensor's name and size follows from these fields."""

    d_model: int
    n_layers: int
    n_heads: int
    d_ff: int
    """Hidden width of the SwiGLU MLP (three d_model x d_ff matrices per block)."""
    vocab_size: int = BYTE_VOCAB
    rope_base: float = 10_000.0
    norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        if min(self.d_model, self.n_layers, self.n_heads, self.d_ff, self.vocab_size) < 1:
            raise ValueError(f"every size must be positive: {self}")
        if self.d_model % self.n_heads or (self.d_model // self.n_heads) % 2:
            raise ValueError(
                f"d_model {self.d_model} must split into {self.n_heads} heads of even width"
            )

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    def param_count(self) -> int:
        """Exactly ``sum(p.numel() for p in model.parameters())``, without building it."""
        d = self.d_model
        per_block = 4 * d * d + 3 * d * self.d_ff + 2 * d  # attention, MLP, two norms
        return self.vocab_size * d + self.n_layers * per_block + d

    def train_flops_per_token(self, seq_len: int) -> float:
        """Forward + backward FLOPs per token at context ``seq_len`` (Kaplan et al. 2020).

        Forward: 2 FLOPs per weight of every matrix (the tied embedding counts once, as the
        output projection; a lookup costs nothing) plus causal attention's scores and
        weighted sum, 2 * n_layers * seq_len * d_model on average. Backward is twice that.
        """
        matrix_weights = self.param_count() - (2 * self.n_layers + 1) * self.d_model
        forward = 2.0 * matrix_weights + 2.0 * self.n_layers * seq_len * self.d_model
        return 3.0 * forward


PRESETS: dict[str, TransformerConfig] = {
    # ~1.1M: trains visibly in a minute on two CPU cores; the size the tests use.
    "tiny": TransformerConfig(d_model=128, n_layers=4, n_heads=4, d_ff=512),
    # ~10.7M: a laptop-sized volunteer model.
    "small": TransformerConfig(d_model=384, n_layers=6, n_heads=6, d_ff=1024),
    # ~25.7M
    "medium": TransformerConfig(d_model=512, n_layers=8, n_heads=8, d_ff=1408),
    # ~113M: GPT-2-small widths with a SwiGLU MLP; for GPUs.
    "base": TransformerConfig(d_model=768, n_layers=12, n_heads=12, d_ff=3072),
}


def rotary_tables(
    seq_len: int, head_dim: int, base: float, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, sin), each [seq_len, head_dim / 2]: the rotation of every position and pair."""
    inv_freq = 1.0 / base ** (
        torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim
    )
    angles = torch.outer(torch.arange(seq_len, dtype=torch.float32, device=device), inv_freq)
    return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the (first half, second half) feature pairs of ``x`` [B, H, T, D] by position."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.n_heads = config.n_heads
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model, bias=False)
        self.out = nn.Linear(config.d_model, config.d_model, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.n_heads, d // self.n_heads).unbind(dim=2)
        q, k, v = (z.transpose(1, 2) for z in (q, k, v))  # [B, H, T, head_dim]
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out(y.transpose(1, 2).reshape(b, t, d))


class SwiGLU(nn.Module):
    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.gate = nn.Linear(config.d_model, config.d_ff, bias=False)
        self.up = nn.Linear(config.d_model, config.d_ff, bias=False)
        self.down = nn.Linear(config.d_ff, config.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.silu(self.gate(x)) * self.up(x))


class Block(nn.Module):
    """Pre-norm residual block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.attn_norm = nn.RMSNorm(config.d_model, eps=config.norm_eps)
        self.attn = CausalSelfAttention(config)
        self.mlp_norm = nn.RMSNorm(config.d_model, eps=config.norm_eps)
        self.mlp = SwiGLU(config)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), cos, sin)
        return x + self.mlp(self.mlp_norm(x))


class DecoderLM(nn.Module):
    """Token ids [B, T] (int64) to next-token logits [B, T, vocab_size] (float32)."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.norm = nn.RMSNorm(config.d_model, eps=config.norm_eps)
        self._init_weights()

    def _init_weights(self) -> None:
        """Draws from torch's global generator in module order: seeded, the same everywhere."""
        residual_std = INIT_STD / math.sqrt(2 * self.config.n_layers)
        for name, param in self.named_parameters():
            if param.dim() < 2:
                continue  # norm gains stay at 1
            std = (
                residual_std if name.endswith(("attn.out.weight", "mlp.down.weight")) else INIT_STD
            )
            nn.init.normal_(param, mean=0.0, std=std)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        t = tokens.shape[1]
        if t > MAX_CONTEXT:
            raise ValueError(f"context of {t} tokens is above the maximum {MAX_CONTEXT}")
        cos, sin = rotary_tables(t, self.config.head_dim, self.config.rope_base, tokens.device)
        x = self.embed(tokens)
        for block in self.blocks:
            x = block(x, cos, sin)
        return F.linear(self.norm(x), self.embed.weight)  # tied output projection


__all__ = [
    "BYTE_VOCAB",
    "MAX_CONTEXT",
    "PRESETS",
    "DecoderLM",
    "TransformerConfig",
]
