"""A trained Cola DLM for inference (``ColaDLMGenerator``, the continuation protocol's interface) and its
loader from a joint-stage checkpoint (``load_dlm``); plain PyTorch, no Ray.
"""
from __future__ import annotations

from pathlib import Path

import torch

from latentlm.models.block_dit import PADDED_MODES
from latentlm.models.checkpoint import read_json
from latentlm.models.config import ConfigError
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

    @classmethod
    def from_checkpoint(cls, cfg, checkpoint: str | Path, use_ema: bool = True, eos_id: int | None = None):
        saved = read_json(Path(checkpoint) / "config.json").get("dlm", {})
        if "clean_prefix_prob" not in saved:  # trained with clean latents tagged as noise (t = 0)
            raise ConfigError(f"{checkpoint}: a Cola DLM checkpoint from before clean latents were tagged as data "
                              "(no dlm.clean_prefix_prob in its config.json); its DiT cannot run under this sampler, "
                              "retrain it")
        return super().from_checkpoint(cfg, checkpoint, use_ema, eos_id)

    def pad_prompt(self, prompt: torch.Tensor) -> torch.Tensor:
        """EOS padding at the token level: to a block multiple under ``left_pad`` (what precedes a document in the
        training stream) or ``right_pad`` (the response then starts after the padding), to a patch multiple (on
        the left) otherwise."""
        mode, p = self.cfg.sampler.first_block, self.cfg.dlm.vae.patch_size
        multiple = self.cfg.dlm.dit.block_size * p if mode in PADDED_MODES else p
        pad = (-prompt.shape[1]) % multiple
        if not pad:
            return prompt
        fill = torch.full((prompt.shape[0], pad), self.eos_id if self.eos_id is not None else 0, dtype=prompt.dtype,
                          device=prompt.device)
        return torch.cat([prompt, fill] if mode == "right_pad" else [fill, prompt], 1)

    @torch.no_grad()
    def generate(self, prompt: torch.Tensor, length: int, steps: int = 16, cfg_scale: float = 7.0, grid: str = "uniform",
                 generator: torch.Generator | None = None, on_step=None) -> torch.Tensor:
        """``on_step(i, ids)``: the denoising progression, see ``ColaDLM.generate``."""
        s = self.cfg.sampler
        progress = None if on_step is None else (lambda i, ids: on_step(i, self.tokenizer_ids(ids)))
        ids = self.model.generate(self.model_ids(self.pad_prompt(prompt)), length, steps, cfg_scale, generator,
                                  s.first_block, s.use_cache, on_step=progress, repaint_repeats=s.repaint_repeats,
                                  repaint_fraction=s.repaint_fraction)
        return self.tokenizer_ids(ids)


def load_dlm(checkpoint: str, use_ema: bool | None = None, device="cpu") -> ColaDLMGenerator:
    """A joint-stage checkpoint directory -> generator, without Ray (``use_ema`` None: the saved ``eval.use_ema``;
    the paper evaluates without EMA)."""
    from latentlm.platform.config import from_dict

    from .config import DLMExperimentConfig
    cfg = from_dict(DLMExperimentConfig, read_json(Path(checkpoint) / "config.json"))
    eos = load_tokenizer(cfg.data.tokenizer).eos_token_id
    use_ema = cfg.eval.use_ema if use_ema is None else use_ema
    return ColaDLMGenerator.from_checkpoint(cfg, checkpoint, use_ema, eos).to(device)
