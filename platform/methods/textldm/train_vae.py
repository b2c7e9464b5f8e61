"""The VAE stage: TextVAE training (with or without REPA) as a Ray Train function."""
from __future__ import annotations

import numpy as np
import torch

from latentlm.models.text_vae import TextVAE
from latentlm.platform.config import from_dict
from latentlm.platform.training.loop import Stage, train_stage
from latentlm.platform.training.parts import (derive_seed, load_vocab, model_ids, seed_everything, stack_column,
                                              worker_context)

METRICS = ("loss", "recon", "kl", "repa", "accuracy")


def random_crop(tokens: torch.Tensor, lengths: torch.Tensor, teacher: torch.Tensor | None, min_len: int,
                generator: torch.Generator):
    """TextLDM's random truncation: one random sub-window [start, start + L) for the whole batch."""
    seq_len = tokens.shape[1]
    new_len = int(torch.randint(min(min_len, seq_len), seq_len + 1, (1,), generator=generator))
    start = int(torch.randint(0, seq_len - new_len + 1, (1,), generator=generator))
    tokens = tokens[:, start:start + new_len]
    lengths = (lengths - start).clamp(0, new_len)
    teacher = None if teacher is None else teacher[:, start:start + new_len]
    return tokens, lengths, teacher


def build_vae_stage(cfg, wc, vocab=None, teacher_dim: int | None = None) -> Stage:
    """The VAE stage of ``cfg`` (a TextLDMConfig) on ``wc``'s device, its VAE freshly initialised from the global
    torch generator; micro-batches hold ``tokens``, ``length`` and, with REPA, ``teacher`` (flattened
    ``teacher_dim`` features per token). No Ray: ``train_vae_loop`` runs it under Ray Train, experiments/gpu_check.py
    without."""
    vae = TextVAE(cfg.vae, teacher_dim=teacher_dim if cfg.vae.repa.enabled else None)
    crop_rng = torch.Generator().manual_seed(derive_seed(cfg.seed, "vae", "crops"))  # the same crops on every rank
    repa_on = cfg.vae.repa.enabled

    def step(engine, micro, _step):
        tokens = torch.from_numpy(stack_column(micro, "tokens"))
        lengths = torch.from_numpy(micro["length"].astype(np.int64))
        teacher = None
        if repa_on:
            flat = stack_column(micro, "teacher", np.float32)
            teacher = torch.from_numpy(flat).view(tokens.shape[0], tokens.shape[1], -1)
        if float(torch.rand((), generator=crop_rng)) < cfg.train_vae.random_truncation:
            tokens, lengths, teacher = random_crop(tokens, lengths, teacher, cfg.train_vae.min_truncation_len,
                                                   crop_rng)
        tokens = model_ids(tokens.to(wc.device), vocab)
        # real tokens only: padding is no key for attention and counts in no loss term (REPA included)
        valid = None
        if bool((lengths < tokens.shape[1]).any()):
            valid = torch.arange(tokens.shape[1], device=wc.device)[None, :] < lengths.to(wc.device)[:, None]
        if teacher is not None:
            teacher = teacher.to(wc.device)
        return engine(tokens, valid, teacher, valid)

    # the VAE is exported as trained (its loaders read vae.safetensors): no EMA
    return Stage("vae", "vae", vae, cfg.train_vae.optim, METRICS, step, vocab=vocab, generators={"crop": crop_rng},
                 ema=False, state={"teacher_dim": teacher_dim})


def train_vae_loop(config: dict) -> None:
    """Ray Train function. ``config``: experiment (TextLDMConfig dict), run_dir, run_name, vocab,
    teacher_dim, and the test-only ``inject_fault`` (see ``training.parts.inject_fault``)."""
    from .config import TextLDMConfig
    cfg = from_dict(TextLDMConfig, config["experiment"])
    wc = worker_context(cfg.resources)
    seed_everything(derive_seed(cfg.seed, "vae", "torch", wc.rank))  # posterior noise per rank, like per sample
    vocab = load_vocab(config.get("vocab"), wc.device)
    train_stage(config, cfg, wc, build_vae_stage(cfg, wc, vocab, config.get("teacher_dim")))
