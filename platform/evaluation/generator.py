"""The base of the token-level generators the protocols call (the AR baseline's and Cola DLM's): a family's trained
module, built in memory or read from its final checkpoint, with tokenizer ids in and out (a model trained on a
compact vocabulary has its ids mapped both ways; the vocabulary's unknown class comes back as -1). Plain PyTorch."""
from __future__ import annotations

from pathlib import Path

import torch

from latentlm.models.checkpoint import load_stage_weights
from latentlm.models.vocab import CompactVocab


class TokenGenerator(torch.nn.Module):
    weights_name: str   # the final stage's module file (``<name>.safetensors``; its EMA is read when saved and asked)

    def __init__(self, cfg, model: torch.nn.Module, vocab: CompactVocab | None = None, eos_id: int | None = None):
        super().__init__()
        self.cfg, self.eos_id = cfg, eos_id
        self.model = model.eval()
        self.vocab = vocab

    @staticmethod
    def build_model(cfg) -> torch.nn.Module:
        """The family's module for an experiment config, freshly initialised."""
        raise NotImplementedError

    @classmethod
    def from_checkpoint(cls, cfg, checkpoint: str | Path, use_ema: bool = True, eos_id: int | None = None):
        """The final stage's weights (its EMA when saved and ``use_ema``) and compact vocabulary."""
        model = cls.build_model(cfg)
        model.load_state_dict(load_stage_weights(checkpoint, cls.weights_name, use_ema))
        return cls(cfg, model, CompactVocab.from_checkpoint(checkpoint), eos_id)

    def model_ids(self, tokenizer_ids: torch.Tensor) -> torch.Tensor:
        return tokenizer_ids if self.vocab is None else self.vocab.encode(tokenizer_ids)

    def tokenizer_ids(self, model_ids: torch.Tensor) -> torch.Tensor:
        return model_ids if self.vocab is None else self.vocab.decode(model_ids)
