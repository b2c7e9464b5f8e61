"""A trained GPT baseline for inference (``ARGenerator``, behind both protocols' interfaces) and its loader
from a checkpoint (``load_ar``); plain PyTorch, no Ray.
"""
from __future__ import annotations

from pathlib import Path

import torch

from latentlm.models.checkpoint import read_json
from latentlm.models.gpt import GPT
from latentlm.platform.data.windows import load_tokenizer
from latentlm.platform.evaluation.generator import TokenGenerator


class ARGenerator(TokenGenerator):
    """A GPT checkpoint behind the interfaces both protocols use, tokenizer ids in and out (a compact
    vocabulary is mapped; its unknown class comes back as -1). Continuation: ``generate(prompts, max_new,
    steps, cfg_scale, grid, generator)``, with ``eos_id`` suppressed until ``max_new`` tokens are out (the
    protocol scores exactly the reference's length). Unconditional: ``sample(n, steps, generator, grid)``,
    full windows. ``steps``, ``cfg_scale`` and ``grid`` are diffusion-sampler knobs that do not act on an AR
    model: accepted and ignored; sampling follows ``gpt.temperature`` / ``gpt.top_p``. There is deliberately
    no ``reconstruct`` and no latent space: an AR model has no latent round trip, so the protocols have no
    reconstruction accuracy or latent-interpolation probe to report for it."""

    weights_name = "gpt"

    @staticmethod
    def build_model(cfg) -> GPT:
        return GPT(cfg.gpt)

    @property
    def device(self) -> torch.device:
        return self.model.tok_emb.weight.device

    @property
    def generator_device(self) -> torch.device:
        return self.device  # token draws happen where the logits are

    def _continue(self, prompts: torch.Tensor, max_new: int, generator: torch.Generator | None,
                  eos_allowed: bool) -> torch.Tensor:
        ids = self.model_ids(prompts)
        eos = None
        if not eos_allowed and self.eos_id is not None:
            eos = self.eos_id if self.vocab is None else int(self.vocab.to_compact[self.eos_id])
        out = self.model.generate(ids, max_new, generator=generator, min_new_tokens=max_new, eos_id=eos)
        return self.tokenizer_ids(out)

    @torch.no_grad()
    def generate(self, prompts: torch.Tensor, max_new: int, steps: int | None = None, cfg_scale: float | None = None,
                 grid: str | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        # the protocol asks for exactly max_new tokens: EOS may not end the continuation early
        return self._continue(prompts, max_new, generator, eos_allowed=False)

    @torch.no_grad()
    def sample(self, n: int, steps: int | None = None, generator: torch.Generator | None = None,
               grid: str | None = None) -> torch.Tensor:
        """``n`` unconditional windows of ``data.seq_len`` tokenizer ids, like the packed held-out windows they
        are scored against: each continues one EOS (the separator that precedes every document in the packed
        training stream; the GPT has no BOS) and may hold EOS, after which a new document begins, as in packed
        windows."""
        if self.eos_id is None:
            raise ValueError("ARGenerator.sample: needs eos_id, the token every window starts after")
        start = torch.full((n, 1), self.eos_id, dtype=torch.long, device=self.device)
        return self._continue(start, self.cfg.data.seq_len, generator, eos_allowed=True)


def load_ar(checkpoint: str, use_ema: bool = True, device="cpu") -> ARGenerator:
    """A GPT checkpoint directory -> generator, without Ray."""
    from latentlm.platform.config import from_dict

    from .config import ARExperimentConfig
    cfg = from_dict(ARExperimentConfig, read_json(Path(checkpoint) / "config.json"))
    eos = load_tokenizer(cfg.data.tokenizer).eos_token_id
    return ARGenerator.from_checkpoint(cfg, checkpoint, use_ema, eos).to(device)
