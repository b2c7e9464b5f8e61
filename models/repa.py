"""REPA: representation alignment of the VAE encoder with a frozen pretrained LM.

L_REPA = -mean_i cos(proj(h_i), stopgrad(y_i)), where h_i is the encoder representation of token i and
y_i the teacher's hidden state for the same token at a chosen layer (TextLDM: third from last beats the
last layer). The projector is TextLDM's linear projection by default (``projector_depth: 1``); depth > 1 is the
image REPA reference's MLP (Linear-SiLU-...-Linear), kept as an option.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from .config import check_fields, require, require_positive


@dataclass
class REPAConfig:
    enabled: bool = True
    teacher: str = "embedded:smollm2"  # local dir, hub name (e.g. Qwen/Qwen3-1.7B) or embedded asset
    layer: int = -3                   # index into the teacher's hidden_states (0 = embeddings); -3 = third from last
    weight: float = 0.5               # lambda_REPA (lost in TextLDM's text; REPA's reference value)
    align_at: int | Literal["output", "latent"] = "output"  # "output" (encoder output), "latent" (posterior mean) or encoder block 1..L
    projector_hidden: int = 512       # width of the MLP's hidden layers (unused at depth 1)
    projector_depth: int = 1          # Linear layers: 1 = TextLDM's linear projection; 3 = the image REPA MLP

    def __post_init__(self):
        check_fields(self, "vae.repa")
        require_positive("vae.repa", projector_hidden=self.projector_hidden)
        depth = self.projector_depth
        require(isinstance(depth, int) and not isinstance(depth, bool) and depth >= 1, "vae.repa.projector_depth",
                "an integer >= 1 (1: linear, as in TextLDM)", depth)
        require(self.weight >= 0, "vae.repa.weight", "a value >= 0", self.weight)


class REPAProjector(nn.Module):
    """``depth`` Linear layers with SiLU between them: depth 1 is a single Linear(in_dim, out_dim)."""

    def __init__(self, in_dim: int, out_dim: int, hidden: int, depth: int):
        super().__init__()
        dims = [in_dim] + [hidden] * (depth - 1) + [out_dim]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
            layers.append(nn.Linear(a, b))
            if i < depth - 1:
                layers.append(nn.SiLU())
        self.net = nn.Sequential(*layers)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.net(h)


def repa_loss(projected: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Negative cosine similarity, averaged over (masked) positions. The teacher side carries no gradient."""
    cos = F.cosine_similarity(projected.float(), teacher.detach().float(), dim=-1, eps=1e-8)
    if mask is None:
        return -cos.mean()
    mask = mask.to(cos.dtype)
    return -(cos * mask).sum() / mask.sum().clamp_min(1.0)
