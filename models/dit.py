"""TextDiT (TextLDM stage 2): a DiT with adaLN-Zero timestep conditioning over
[clean context latents ; noisy target latents], predicting the flow-matching velocity of the target.

Follows the DiT reference: sinusoidal timestep -> MLP -> per-block (shift, scale, gate) for attention
and MLP, modulated LayerNorms without affine, zero-initialised gates and output layer so every block
starts as the identity. Context and target share the input projection and are told apart by a learned
segment embedding; positions are rotary over the concatenated sequence.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from .config import check_fields, require, require_fraction, require_positive
from .flow import guided_velocity
from .layers import MLP, RotaryEmbedding, SelfAttention, key_padding_mask, timestep_embedding


@dataclass
class TextDiTConfig:
    latent_dim: int = 64
    hidden_dim: int = 384
    depth: int = 6
    n_heads: int = 6
    mlp_ratio: float = 4.0
    max_seq_len: int = 128
    cfg_dropout: float = 0.1     # P(context -> null condition) per sample, for classifier-free guidance
    uncond_prob: float = 0.1     # P(batch trained with an empty context) -> unconditional generation
    null_context: Literal["zeros"] = "zeros"  # TextLDM replaces dropped context latents by zeros

    def __post_init__(self):
        check_fields(self, "dit")
        require_positive("dit", latent_dim=self.latent_dim, hidden_dim=self.hidden_dim, depth=self.depth,
                         n_heads=self.n_heads, mlp_ratio=self.mlp_ratio, max_seq_len=self.max_seq_len)
        require(self.hidden_dim % self.n_heads == 0 and (self.hidden_dim // self.n_heads) % 2 == 0,
                "dit.hidden_dim", f"a multiple of 2*n_heads ({2 * self.n_heads})", self.hidden_dim)
        require_fraction("dit", cfg_dropout=self.cfg_dropout, uncond_prob=self.uncond_prob)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class TimestepEmbedder(nn.Module):
    def __init__(self, dim: int, frequency_dim: int = 256):
        super().__init__()
        self.frequency_dim = frequency_dim
        self.mlp = nn.Sequential(nn.Linear(frequency_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(timestep_embedding(t, self.frequency_dim).to(self.mlp[0].weight.dtype))


class DiTBlock(nn.Module):
    def __init__(self, dim: int, n_heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = SelfAttention(dim, n_heads)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = MLP(dim, mlp_ratio)
        self.adaLN = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))

    def forward(self, x, c, rope, attn_mask=None):
        shift1, scale1, gate1, shift2, scale2, gate2 = self.adaLN(c).chunk(6, dim=-1)
        x = x + gate1.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift1, scale1), rope, attn_mask)
        return x + gate2.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift2, scale2))


class FinalLayer(nn.Module):
    def __init__(self, dim: int, out_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.adaLN = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))
        self.linear = nn.Linear(dim, out_dim)

    def forward(self, x, c):
        shift, scale = self.adaLN(c).chunk(2, dim=-1)
        return self.linear(modulate(self.norm(x), shift, scale))


class TextDiT(nn.Module):
    def __init__(self, config: TextDiTConfig):
        super().__init__()
        self.config = c = config
        self.input_proj = nn.Linear(c.latent_dim, c.hidden_dim)
        self.segment = nn.Embedding(2, c.hidden_dim)  # 0 = clean context, 1 = noisy target
        self.t_embedder = TimestepEmbedder(c.hidden_dim)
        self.rope = RotaryEmbedding(c.hidden_dim // c.n_heads)
        self.blocks = nn.ModuleList(DiTBlock(c.hidden_dim, c.n_heads, c.mlp_ratio) for _ in range(c.depth))
        self.final = FinalLayer(c.hidden_dim, c.latent_dim)
        self._init_weights()

    def _init_weights(self):
        def basic(m):
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        self.apply(basic)
        nn.init.normal_(self.segment.weight, std=0.02)
        for layer in (self.t_embedder.mlp[0], self.t_embedder.mlp[2]):
            nn.init.normal_(layer.weight, std=0.02)
        # adaLN-Zero: every block starts as the identity and the output as zero velocity.
        for block in self.blocks:
            nn.init.zeros_(block.adaLN[-1].weight)
            nn.init.zeros_(block.adaLN[-1].bias)
        for layer in (self.final.adaLN[-1], self.final.linear):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor | None = None,
                keep_context: torch.Tensor | None = None, is_target: torch.Tensor | None = None,
                valid: torch.Tensor | None = None) -> torch.Tensor:
        """Predicted flow-matching velocity. t: (B,); keep_context: (B,) bool, False replaces that sample's
        context by the null condition (zeros).

        Sampling (``is_target`` None): x (B, Tt, d) noisy target latents after ``context`` (B, Tc, d) clean
        latents (None: empty); returns (B, Tt, d). Training (``is_target`` (B, T) bool): x is one window per
        sample with its own split, clean context latents where ``is_target`` is False and noisy target latents
        where it is True; ``valid`` (B, T) marks real positions (padding is no key for attention). Returns the
        velocity at every position (B, T, d); only valid target positions mean anything. Both are one
        computation: sampling is a window whose split is the same for every sample."""
        if is_target is None:
            b, target_len, _ = x.shape
            ctx_len = 0 if context is None else context.shape[1]
            is_target = torch.cat([x.new_zeros(ctx_len, dtype=torch.bool),
                                   x.new_ones(target_len, dtype=torch.bool)]).expand(b, -1)
            window = x if context is None else torch.cat([context.to(x.dtype), x], dim=1)
            return self(window, t, None, keep_context, is_target)[:, ctx_len:]
        if context is not None:
            raise ValueError("TextDiT: a window (is_target given) holds its context; pass context=None")
        if keep_context is not None:  # the null condition: zeros in place of the context latents
            x = torch.where(is_target[..., None] | keep_context.view(-1, 1, 1), x, torch.zeros_like(x))
        h = self.input_proj(x.to(self.input_proj.weight.dtype)) + self.segment(is_target.long())
        c = self.t_embedder(t)
        rope = self.rope(x.shape[1], h.device)
        mask = key_padding_mask(valid)
        for block in self.blocks:
            h = block(h, c, rope, mask)
        return self.final(h, c)

    def forward_with_cfg(self, x_t, t, context, scale: float):
        """Batch-doubled guided velocity: one pass over [conditional ; null-context] inputs."""
        b = x_t.shape[0]
        if context is None or context.shape[1] == 0:
            return self(x_t, t, context)  # nothing to guide on
        keep = torch.cat([torch.ones(b, dtype=torch.bool, device=x_t.device),
                          torch.zeros(b, dtype=torch.bool, device=x_t.device)])
        v = self(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([context, context]), keep)
        cond, uncond = v.chunk(2)
        return guided_velocity(cond, uncond, scale)
