"""TextDiT (TextLDM stage 2): a DiT with adaLN-Zero timestep conditioning over
[clean context latents ; noisy target latents], predicting the flow-matching velocity of the target.

Follows the DiT reference: sinusoidal timestep -> MLP -> per-block (shift, scale, gate) for attention
and MLP, modulated LayerNorms without affine, zero-initialised gates and output layer so every block
starts as the identity. Context and target share the input projection and are told apart by a learned
segment embedding; positions are rotary over the concatenated sequence.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .config import require, require_fraction, require_positive
from .flow import guided_velocity
from .layers import MLP, RotaryEmbedding, SelfAttention, timestep_embedding


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
    null_context: str = "zeros"  # TextLDM replaces dropped context latents by zeros

    def __post_init__(self):
        require_positive("dit", latent_dim=self.latent_dim, hidden_dim=self.hidden_dim, depth=self.depth,
                         n_heads=self.n_heads, mlp_ratio=self.mlp_ratio, max_seq_len=self.max_seq_len)
        require(self.hidden_dim % self.n_heads == 0 and (self.hidden_dim // self.n_heads) % 2 == 0,
                "dit.hidden_dim", f"a multiple of 2*n_heads ({2 * self.n_heads})", self.hidden_dim)
        require_fraction("dit", cfg_dropout=self.cfg_dropout, uncond_prob=self.uncond_prob)
        require(self.null_context == "zeros", "dit.null_context", "'zeros'", self.null_context)


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

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, context: torch.Tensor | None = None,
                keep_context: torch.Tensor | None = None) -> torch.Tensor:
        """x_t: (B, Tt, d) noisy target latents; t: (B,); context: (B, Tc, d) clean latents or None (empty);
        keep_context: (B,) bool, False replaces that sample's context by the null condition (zeros).
        Returns the predicted velocity (B, Tt, d)."""
        b, target_len, _ = x_t.shape
        if context is None:
            context = x_t.new_zeros(b, 0, x_t.shape[-1])
        if keep_context is not None:
            context = context * keep_context.view(b, 1, 1).to(context.dtype)
        ctx_len = context.shape[1]
        h = self.input_proj(torch.cat([context, x_t], dim=1).to(self.input_proj.weight.dtype))
        segments = torch.cat([x_t.new_zeros(ctx_len, dtype=torch.long), x_t.new_ones(target_len, dtype=torch.long)])
        h = h + self.segment(segments)
        c = self.t_embedder(t)
        rope = self.rope(ctx_len + target_len, h.device)
        for block in self.blocks:
            h = block(h, c, rope)
        return self.final(h[:, ctx_len:], c)

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
