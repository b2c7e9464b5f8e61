"""LDLM's frozen token encoder: one hidden layer of any HF causal or masked LM, standardised per channel
with statistics measured once on the training data and stored with the run (``HiddenStats``)."""
from __future__ import annotations

import torch
from torch import nn

from .teacher import FrozenTeacher


class HiddenStats(nn.Module):
    """Per-channel mean/std of the encoder's hidden states; accumulates exactly (float64 sums) over batches."""

    def __init__(self, dim: int, eps: float = 1e-4):
        super().__init__()
        self.eps = eps
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    @staticmethod
    def moments(states: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """(count, sum, sum of squares) per channel over the real positions: summable across batches/workers."""
        flat = states.reshape(-1, states.shape[-1]).double()
        if mask is not None:
            flat = flat[mask.reshape(-1).bool()]
        return torch.stack([torch.full_like(flat[0], flat.shape[0]), flat.sum(0), flat.pow(2).sum(0)])

    @torch.no_grad()
    def set_from_moments(self, moments: torch.Tensor) -> "HiddenStats":
        count, mean = moments[0], moments[1] / moments[0]
        var = (moments[2] / count - mean.pow(2)).clamp_min(0) * count / (count - 1).clamp_min(1)
        self.mean.copy_(mean.float())
        self.std.copy_(var.sqrt().float().clamp_min(self.eps))
        return self

    def normalize(self, states: torch.Tensor) -> torch.Tensor:
        return (states.float() - self.mean) / self.std


class TokenEncoder(nn.Module):
    """tokens -> normalised hidden states of ``layer`` (Python-style index; -3 = third from last)."""

    def __init__(self, name_or_path: str, layer: int, stats: HiddenStats, dtype=torch.float32, device="cpu"):
        super().__init__()
        self.lm = FrozenTeacher(name_or_path, [layer], dtype=dtype, device=device)
        self.layer = self.lm.layers[0]
        self.stats = stats.to(device)

    @torch.no_grad()
    def forward(self, tokens: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.stats.normalize(self.lm(tokens, attention_mask)[self.layer])
