"""Sequence-to-sequence maps between a frozen LM's hidden states and LDLM latents.

Two interchangeable architectures (LDLM ablates them, Appendix B.4):

* ``PerceiverResampler`` (default, Flamingo): a set of trainable query vectors -- one per output
  position -- cross-attends to the inputs, which stay fixed across layers; the output length is the
  number of queries, independent of the input length. Queries and inputs carry rotary positions on a
  shared axis (query i sits at i * T_in / T_out), so "read around my position" is the easy default and
  the resampler learns in hundreds of steps rather than thousands; a learned query can still read anywhere.
* ``SelfAttentionCoder``: the inputs themselves are updated by bidirectional self-attention blocks, so
  the output has one vector per input position.

Both take (B, T_in, in_dim) and return (B, T_out, out_dim); both are used as the latent encoder
(hidden states -> latents) and the latent decoder (latents -> hidden states).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from .config import check_fields, require, require_positive
from .layers import MLP, RotaryEmbedding, TransformerBlock, apply_rotary, key_padding_mask


@dataclass
class CoderConfig:
    kind: Literal["perceiver", "self_attention"] = "perceiver"  # self_attention: the ablation
    depth: int = 6
    hidden_dim: int = 768
    n_heads: int = 12
    mlp_ratio: float = 4.0

    def validate(self, owner: str) -> None:
        check_fields(self, owner)
        require_positive(owner, depth=self.depth, hidden_dim=self.hidden_dim, n_heads=self.n_heads,
                         mlp_ratio=self.mlp_ratio)
        require(self.hidden_dim % self.n_heads == 0 and (self.hidden_dim // self.n_heads) % 2 == 0,
                f"{owner}.hidden_dim", f"a multiple of 2*n_heads ({2 * self.n_heads})", self.hidden_dim)


class CrossAttention(nn.Module):
    """Queries attend to ``[inputs ; queries]`` (Flamingo's resampler: the latents also see each other)."""

    def __init__(self, dim: int, n_heads: int):
        super().__init__()
        self.n_heads, self.head_dim = n_heads, dim // n_heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, queries: torch.Tensor, inputs: torch.Tensor, rope_q, rope_k,
                input_mask: torch.Tensor | None = None):
        """rope_q: cos/sin at the query positions; rope_k: at [input positions ; query positions]."""
        b, tq, c = queries.shape
        keys = torch.cat([inputs, queries], dim=1)
        q = self.q(queries).view(b, tq, self.n_heads, self.head_dim).transpose(1, 2)
        k, v = self.kv(keys).view(b, keys.shape[1], 2, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k = apply_rotary(q, *rope_q), apply_rotary(k, *rope_k)
        mask = None
        if input_mask is not None:  # padded inputs are invisible; the queries always are visible
            mask = key_padding_mask(torch.cat([input_mask, input_mask.new_ones(b, tq)], dim=1))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.proj(out.transpose(1, 2).reshape(b, tq, c))


class PerceiverLayer(nn.Module):
    def __init__(self, dim: int, n_heads: int, mlp_ratio: float):
        super().__init__()
        self.norm_q, self.norm_in = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = CrossAttention(dim, n_heads)
        self.norm_mlp = nn.LayerNorm(dim)
        self.mlp = MLP(dim, mlp_ratio)

    def forward(self, queries, inputs, rope_q, rope_k, input_mask=None):
        queries = queries + self.attn(self.norm_q(queries), self.norm_in(inputs), rope_q, rope_k, input_mask)
        return queries + self.mlp(self.norm_mlp(queries))


class PerceiverResampler(nn.Module):
    """``num_outputs`` learned queries read a variable-length input through ``depth`` cross-attention layers."""

    def __init__(self, config: CoderConfig, in_dim: int, out_dim: int, num_outputs: int):
        super().__init__()
        dim = config.hidden_dim
        self.in_proj = nn.Linear(in_dim, dim)
        self.queries = nn.Parameter(torch.randn(num_outputs, dim) * 0.02)  # one query per output position
        self.rope = RotaryEmbedding(dim // config.n_heads)
        self.layers = nn.ModuleList(PerceiverLayer(dim, config.n_heads, config.mlp_ratio) for _ in range(config.depth))
        self.norm = nn.LayerNorm(dim)
        self.out_proj = nn.Linear(dim, out_dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        inputs = self.in_proj(x)
        queries = self.queries.unsqueeze(0).expand(x.shape[0], -1, -1)
        n_in, n_out = x.shape[1], queries.shape[1]
        input_pos = torch.arange(n_in, device=x.device, dtype=torch.float32)
        query_pos = torch.arange(n_out, device=x.device, dtype=torch.float32) * (n_in / n_out)
        rope_q = self.rope.at(query_pos)
        rope_k = self.rope.at(torch.cat([input_pos, query_pos]))
        for layer in self.layers:
            queries = layer(queries, inputs, rope_q, rope_k, mask)
        return self.out_proj(self.norm(queries))


class SelfAttentionCoder(nn.Module):
    """Bidirectional Transformer over the inputs; one output per input position."""

    def __init__(self, config: CoderConfig, in_dim: int, out_dim: int):
        super().__init__()
        dim = config.hidden_dim
        self.in_proj = nn.Linear(in_dim, dim)
        self.rope = RotaryEmbedding(dim // config.n_heads)
        self.blocks = nn.ModuleList(TransformerBlock(dim, config.n_heads, config.mlp_ratio)
                                    for _ in range(config.depth))
        self.norm = nn.LayerNorm(dim)
        self.out_proj = nn.Linear(dim, out_dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        h = self.in_proj(x)
        rope = self.rope(x.shape[1], x.device)
        attn_mask = key_padding_mask(mask)
        for block in self.blocks:
            h = block(h, rope, attn_mask)
        return self.out_proj(self.norm(h))


def build_coder(config: CoderConfig, in_dim: int, out_dim: int, num_outputs: int, max_input_len: int) -> nn.Module:
    if config.kind == "perceiver":
        return PerceiverResampler(config, in_dim, out_dim, num_outputs)
    require(num_outputs == max_input_len, "self_attention coder", f"as many outputs as inputs ({max_input_len})",
            num_outputs)
    return SelfAttentionCoder(config, in_dim, out_dim)
