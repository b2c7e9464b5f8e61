"""A trained LDLM for inference (``LDLMGenerator``) and its loader from a saved joint or post-decoder
checkpoint (``load_ldlm``); plain PyTorch, no Ray.
"""
from __future__ import annotations

from pathlib import Path

import torch

from latentlm.models.checkpoint import load_tensors, read_json
from latentlm.models.ldlm import LDLM, PostTrainedDecoder
from latentlm.models.token_encoder import HiddenStats
from latentlm.models.vocab import CompactVocab
from latentlm.platform.config import from_dict

from .config import LDLMExperimentConfig
from .train import load_joint_model


class LDLMGenerator:
    """A trained LDLM for inference: samples latents, decodes them (jointly trained or post-trained token
    decoder) and maps ids back to the tokenizer's vocabulary."""
    generator_device = "cpu"  # latent noise is drawn on the CPU and moved: samples do not depend on the device

    def __init__(self, cfg, model: LDLM, stats: HiddenStats | None, vocab: CompactVocab | None = None,
                 post: PostTrainedDecoder | None = None, device="cpu"):
        """``model``: the joint stage's LDLM; ``stats``: the token encoder's normaliser (None with scratch
        embeddings); ``post``: a post-trained token decoder that replaces the joint one. ``cfg.sampler`` picks the
        sampler."""
        self.cfg, self.device = cfg, device
        self.model = model.to(device).eval().requires_grad_(False)
        self.stats = stats
        self.vocab = vocab.to(device) if vocab is not None else None
        self.post = post.to(device).eval() if post is not None else None

    @classmethod
    def from_checkpoints(cls, cfg, joint_checkpoint: str | Path, post_checkpoint: str | Path | None = None,
                         device="cpu") -> "LDLMGenerator":
        """The joint stage (its EMA when saved and ``cfg.eval.use_ema``), its statistics and vocabulary, and the
        post-trained decoder when given."""
        d = Path(joint_checkpoint)
        stats = None
        if cfg.uses_token_encoder:
            stats = HiddenStats(cfg.ldlm.hidden_size)
            stats.load_state_dict(load_tensors(d / "hidden_stats.safetensors"))
        post = None
        if post_checkpoint is not None:
            post = PostTrainedDecoder(cfg.ldlm, cfg.train_post_decoder.layers, cfg.train_post_decoder.source)
            post.load_state_dict(load_tensors(Path(post_checkpoint) / "post_decoder.safetensors"))
        model = load_joint_model(str(joint_checkpoint), cfg, device, use_ema=cfg.eval.use_ema)
        return cls(cfg, model, stats, CompactVocab.from_checkpoint(d), post, device)

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Clean latents -> tokenizer ids (-1 for a compact vocabulary's unknown class)."""
        logits = self.post(z, self.model.decoder) if self.post is not None else \
            self.model.token_decoder(self.model.decoder(z))
        ids = logits.argmax(-1)
        return self.vocab.decode(ids) if self.vocab is not None else ids

    @torch.no_grad()
    def sample(self, n: int, steps: int, generator: torch.Generator, grid: str = "log_snr", on_step=None):
        """``n`` windows of tokenizer ids; ``on_step(step, ids)`` sees the decoded latents after each step."""
        decoded = None if on_step is None else lambda step, z: on_step(step, self.decode(z))
        s = self.cfg.sampler
        return self.decode(self.model.sample_latents(n, steps, generator, grid, self.device, decoded, s.kind, s.eta))


def saved_checkpoints(checkpoint: str | Path) -> tuple[str, str | None]:
    """(joint, post-decoder or None) of a final LDLM checkpoint: a post-decoder one names its joint stage, which
    an exported one (``hub.export_checkpoint``) carries inside it as ``joint/``."""
    state = read_json(Path(checkpoint) / "state.json")
    if state["stage"] == "post_decoder":
        bundled = Path(checkpoint) / "joint"
        return str(bundled) if bundled.is_dir() else state["joint_checkpoint"], str(checkpoint)
    return str(checkpoint), None


def bundled_checkpoints(checkpoint: Path) -> dict[str, Path]:
    """A post-decoder checkpoint's generator also reads its joint stage: exported with it as ``joint/``."""
    joint, post = saved_checkpoints(checkpoint)
    return {"joint": Path(joint)} if post is not None else {}


def load_ldlm(checkpoint: str | Path, use_ema: bool = True, device="cpu"):
    """A joint or post-decoder checkpoint directory -> ``LDLMGenerator`` under its saved config, without Ray."""
    cfg = from_dict(LDLMExperimentConfig, read_json(Path(checkpoint) / "config.json"))
    cfg.eval.use_ema = use_ema
    return LDLMGenerator.from_checkpoints(cfg, *saved_checkpoints(checkpoint), device)
