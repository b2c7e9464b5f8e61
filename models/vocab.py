"""An optional compact vocabulary for the latent models.

With a 49k-152k token vocabulary, the VAE's embedding and (above all) its output head dominate the cost
of small models. ``CompactVocab`` keeps the K ids a training corpus actually uses most and maps every
other id to one shared unknown id, so the VAE predicts over K + 1 classes. The tokenizer, the teacher and
every text-level metric still see the full vocabulary; reconstruction accuracy counts an unknown-mapped
token as an error. ``data.vocab_limit: null`` (the default for real runs) disables it.
"""
from __future__ import annotations

import torch
from torch import nn

UNKNOWN = -1  # full-vocabulary id reported for the shared unknown class (no tokenizer can decode it)


class CompactVocab(nn.Module):
    def __init__(self, keep_ids: torch.Tensor, full_size: int):
        super().__init__()
        keep_ids = torch.as_tensor(keep_ids, dtype=torch.long).sort().values
        if keep_ids.numel() == 0 or int(keep_ids.max()) >= full_size:
            raise ValueError(f"keep_ids must be non-empty ids < full_size={full_size}")
        to_compact = torch.full((full_size,), keep_ids.numel(), dtype=torch.long)
        to_compact[keep_ids] = torch.arange(keep_ids.numel())
        self.register_buffer("to_compact", to_compact)
        self.register_buffer("to_full", torch.cat([keep_ids, torch.tensor([UNKNOWN])]))

    @property
    def size(self) -> int:
        """Number of classes the model predicts: the kept ids plus the unknown class."""
        return self.to_full.numel()

    @property
    def unknown_id(self) -> int:
        return self.size - 1

    @classmethod
    def from_counts(cls, counts: torch.Tensor, limit: int, always_keep: list[int]) -> "CompactVocab":
        """Keep the ``limit`` most frequent ids (ties: lower id first) plus ``always_keep`` (EOS/pad)."""
        order = sorted(range(len(counts)), key=lambda i: (-int(counts[i]), i))
        keep = set(always_keep) | {i for i in order[:limit] if counts[i] > 0}
        return cls(torch.tensor(sorted(keep)), len(counts))

    def encode(self, ids: torch.Tensor) -> torch.Tensor:
        return self.to_compact[ids]

    def decode(self, ids: torch.Tensor) -> torch.Tensor:
        return self.to_full[ids]

    def tensors(self) -> dict[str, torch.Tensor]:
        """What a checkpoint stores (``vocab.safetensors``)."""
        return {"keep_ids": self.to_full[:-1], "full_size": torch.tensor([self.to_compact.numel()])}

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor]) -> "CompactVocab":
        return cls(tensors["keep_ids"], int(tensors["full_size"][0]))

    @classmethod
    def from_checkpoint(cls, directory) -> "CompactVocab | None":
        """The vocabulary a checkpoint directory stores, or None for a model on the full vocabulary."""
        from pathlib import Path

        from .checkpoint import load_tensors
        path = Path(directory) / "vocab.safetensors"
        return cls.from_tensors(load_tensors(path)) if path.is_file() else None
