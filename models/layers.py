"""Transformer building blocks shared by the TextVAE and the DiT.

Pre-norm blocks, rotary position embeddings and PyTorch's fused scaled-dot-product attention.
The DiT adds adaLN modulation on top of the same attention/MLP (see ``dit.py``).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class RotaryEmbedding(nn.Module):
    """Rotary position embedding (RoPE); relative positions, so segments encoded on their own are fine."""

    def __init__(self, head_dim: int, base: float = 10_000.0):
        super().__init__()
        inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, seq_len: int, device: torch.device, offset: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        return self.at(torch.arange(offset, offset + seq_len, device=device, dtype=torch.float32))

    def at(self, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin at arbitrary (also fractional) positions."""
        freqs = torch.outer(pos.float(), self.inv_freq.to(pos.device))
        angles = torch.cat((freqs, freqs), dim=-1)  # (T, head_dim)
        return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: (B, H, T, D); cos/sin: (T, D)."""
    x1, x2 = x.chunk(2, dim=-1)
    rotated = torch.cat((-x2, x1), dim=-1)
    return (x * cos + rotated * sin).to(x.dtype)


class KVSlot:
    """One attention layer's cached keys and values (B, H, L, D) for incremental decoding."""

    def __init__(self):
        self.k: torch.Tensor | None = None
        self.v: torch.Tensor | None = None

    @property
    def length(self) -> int:
        return 0 if self.k is None else self.k.shape[2]

    def extend(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append the new positions' keys/values; returns all cached ones (past + new)."""
        self.k = k if self.k is None else torch.cat([self.k, k], 2)
        self.v = v if self.v is None else torch.cat([self.v, v], 2)
        return self.k, self.v


class SelfAttention(nn.Module):
    def __init__(self, dim: int, n_heads: int, dropout: float = 0.0):
        super().__init__()
        if dim % n_heads:
            raise ValueError(f"hidden dim {dim} must be divisible by n_heads {n_heads}")
        self.n_heads = n_heads
        self.head_dim = dim // n_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.dropout = dropout

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor],
                attn_mask: torch.Tensor | None = None, cache: KVSlot | None = None) -> torch.Tensor:
        """x: (B, T, C); rope: cos/sin at x's positions; attn_mask: bool, broadcastable to (B, H, T, L),
        True = may attend, where L = T, or cached + T with ``cache`` (whose new keys/values are appended)."""
        b, t, c = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        cos, sin = rope
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if cache is not None:
            k, v = cache.extend(k, v)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask,
                                             dropout_p=self.dropout if self.training else 0.0)
        return self.proj(out.transpose(1, 2).reshape(b, t, c))


class MLP(nn.Module):
    def __init__(self, dim: int, mlp_ratio: float = 4.0, dropout: float = 0.0):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(F.gelu(self.fc1(x), approximate="tanh")))


class TransformerBlock(nn.Module):
    """Pre-norm bidirectional Transformer block (used by the VAE encoder and decoder)."""

    def __init__(self, dim: int, n_heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, n_heads, dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, mlp_ratio, dropout)

    def forward(self, x, rope, attn_mask=None, cache: KVSlot | None = None):
        x = x + self.attn(self.norm1(x), rope, attn_mask, cache)
        return x + self.mlp(self.norm2(x))


def key_padding_mask(valid: torch.Tensor | None) -> torch.Tensor | None:
    """(B, T) bool of valid keys -> (B, 1, 1, T) attention mask for SDPA (None passes through)."""
    return None if valid is None else valid[:, None, None, :]


def masked_mean(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of ``values`` over the positions where ``mask`` is True (all positions when None)."""
    if mask is None:
        return values.mean()
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp_min(1.0)


def segment_mask(segments: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """(B, T) segment ids (+ valid keys) -> (B, 1, T, T) mask: a position attends only within its segment.

    With relative (rotary) positions this encodes each segment exactly as if it were a sequence of its own,
    so a batch of per-sample prompt/target splits is encoded in one pass without leaking across the split."""
    mask = segments[:, :, None] == segments[:, None, :]
    if valid is not None:
        mask = mask & valid[:, None, :]
    return mask[:, None]


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """Sinusoidal embedding of continuous timesteps t in [0, 1] (scaled by 1000 as in DiT). (B,) -> (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = (t.float() * 1000.0)[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb
