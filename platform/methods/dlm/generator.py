"""A trained Cola DLM for inference (``ColaDLMGenerator``, the continuation protocol's interface) and its
loader from a stage-2 checkpoint (``load_dlm``); plain PyTorch, no Ray.
"""
from __future__ import annotations

from pathlib import Path

import torch

from latentlm.models.checkpoint import load_stage_weights, read_json
from latentlm.models.dlm import ColaDLM
from latentlm.models.vocab import CompactVocab
from latentlm.platform.data.windows import load_tokenizer


class ColaDLMGenerator(torch.nn.Module):
    """A stage-2 checkpoint behind the interface the continuation protocol uses (``generate``,
    ``reconstruct``; tokenizer ids in and out, compact vocabularies mapped)."""

    def __init__(self, cfg, model: ColaDLM, vocab: CompactVocab | None = None, eos_id: int | None = None):
        super().__init__()
        self.cfg, self.eos_id = cfg, eos_id
        self.model = model.eval()
        self.vocab = vocab

    @classmethod
    def from_checkpoint(cls, cfg, checkpoint: str | Path, use_ema: bool = True, eos_id: int | None = None):
        """The stage-2 weights (its EMA when saved and ``use_ema``) and compact vocabulary."""
        model = ColaDLM(cfg.dlm)
        model.load_state_dict(load_stage_weights(checkpoint, "joint", use_ema))
        return cls(cfg, model, CompactVocab.from_checkpoint(checkpoint), eos_id)

    def _in(self, tokens):
        return tokens if self.vocab is None else self.vocab.encode(tokens)

    def _out(self, ids):
        return ids if self.vocab is None else self.vocab.decode(ids)

    @torch.no_grad()
    def reconstruct(self, tokens: torch.Tensor) -> torch.Tensor:
        return self._out(self.model.vae.reconstruct(self._in(tokens)))

    @torch.no_grad()
    def generate(self, prompt: torch.Tensor, length: int, steps: int = 16, cfg_scale: float = 7.0, grid: str = "uniform",
                 generator: torch.Generator | None = None, on_step=None) -> torch.Tensor:
        """``on_step(i, ids)``: the denoising progression, see ``ColaDLM.generate``."""
        s, p = self.cfg.sampler, self.cfg.dlm.vae.patch_size
        multiple = self.cfg.dlm.dit.block_size * p if s.pad_prompt else p
        pad = (-prompt.shape[1]) % multiple
        if pad:  # left-pad with EOS: what precedes a document in the training stream
            fill = self.eos_id if self.eos_id is not None else 0
            prompt = torch.cat([torch.full((prompt.shape[0], pad), fill, dtype=prompt.dtype, device=prompt.device),
                                prompt], 1)
        progress = None if on_step is None else (lambda i, ids: on_step(i, self._out(ids)))
        ids = self.model.generate(self._in(prompt), length, steps, cfg_scale, generator, s.first_block, s.use_cache,
                                  on_step=progress)
        return self._out(ids)


def load_dlm(checkpoint: str, use_ema: bool = True, device="cpu") -> ColaDLMGenerator:
    """A stage-2 checkpoint directory -> generator, without Ray."""
    from latentlm.platform.config import from_dict

    from .config import DLMExperimentConfig
    cfg = from_dict(DLMExperimentConfig, read_json(Path(checkpoint) / "config.json"))
    eos = load_tokenizer(cfg.data.tokenizer).eos_token_id
    return ColaDLMGenerator.from_checkpoint(cfg, checkpoint, use_ema, eos).to(device)
