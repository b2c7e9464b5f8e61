"""A trained Cola DLM for inference (``ColaDLMGenerator``, the continuation protocol's interface) and its
loader from a joint-stage checkpoint (``load_dlm``); plain PyTorch, no Ray.
"""
from __future__ import annotations

from pathlib import Path

import torch

from latentlm.models.checkpoint import read_json
from latentlm.models.dlm import ColaDLM
from latentlm.platform.data.windows import load_tokenizer
from latentlm.platform.evaluation.generator import TokenGenerator


class ColaDLMGenerator(TokenGenerator):
    """A joint-stage checkpoint behind the interface the continuation protocol uses (``generate``,
    ``reconstruct``; tokenizer ids in and out, compact vocabularies mapped)."""

    weights_name = "joint"   # the joint-stage module

    @staticmethod
    def build_model(cfg) -> ColaDLM:
        return ColaDLM(cfg.dlm)

    @torch.no_grad()
    def reconstruct(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.tokenizer_ids(self.model.vae.reconstruct(self.model_ids(tokens)))

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
        progress = None if on_step is None else (lambda i, ids: on_step(i, self.tokenizer_ids(ids)))
        ids = self.model.generate(self.model_ids(prompt), length, steps, cfg_scale, generator, s.first_block, s.use_cache,
                                  on_step=progress)
        return self.tokenizer_ids(ids)


def load_dlm(checkpoint: str, use_ema: bool = True, device="cpu") -> ColaDLMGenerator:
    """A joint-stage checkpoint directory -> generator, without Ray."""
    from latentlm.platform.config import from_dict

    from .config import DLMExperimentConfig
    cfg = from_dict(DLMExperimentConfig, read_json(Path(checkpoint) / "config.json"))
    eos = load_tokenizer(cfg.data.tokenizer).eos_token_id
    return ColaDLMGenerator.from_checkpoint(cfg, checkpoint, use_ema, eos).to(device)
