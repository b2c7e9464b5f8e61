"""Cola DLM stages as Ray Train functions.

* ``dlm_vae_loop``: Text VAE pretraining (reconstruction + KL + masking loss), the measured VAE logSNR
  in every log line.
* ``dlm_joint_loop``: joint VAE + block-causal DiT. ``dlm.vae_strategy``: ``joint`` starts from the pretrained
  VAE and trains it at ``vae_lr_ratio`` x the DiT's learning rate, regularised towards the frozen pretrained
  encoder; ``frozen`` trains the DiT only; ``scratch`` trains everything from random initialisation;
  ``interval`` is ``joint`` for ``interval_steps`` steps, then frozen for as many, and so on.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch

from latentlm.models.checkpoint import load_tensors
from latentlm.models.dlm import ColaDLM
from latentlm.models.dlm_vae import DLMTextVAE
from latentlm.platform.config import from_dict
from latentlm.platform.training.loop import Stage, train_stage
from latentlm.platform.training.parts import derive_seed, load_vocab, seed_everything, window_tokens, worker_context

VAE_METRICS = ("loss", "recon", "kl", "mask", "accuracy", "logsnr")
JOINT_METRICS = ("loss", "fm", "vae", "recon", "kl", "mask", "ref", "accuracy", "logsnr")


def _experiment(config: dict):
    from .config import DLMExperimentConfig
    return from_dict(DLMExperimentConfig, config["experiment"])


def load_pretrained_vae(cfg, checkpoint: str, device) -> DLMTextVAE:
    vae = DLMTextVAE(cfg.dlm.vae)
    vae.load_state_dict(load_tensors(Path(checkpoint) / "vae.safetensors"))
    return vae.to(device)


def build_dlm_stage(cfg, wc, stage: str, model: torch.nn.Module, optim, metrics, vocab=None, lr_multiplier=None,
                    vae_checkpoint: str | None = None) -> Stage:
    """Either stage (``stage``: ``vae`` or ``joint``) on ``wc``'s device: ``model(tokens, mask, noise generator)`` on
    each micro-batch of token windows (``tokens``, ``length``). No Ray: the ``dlm_*_loop`` functions run it under
    Ray Train, experiments/gpu_check.py without."""
    noise_rng = torch.Generator(wc.device).manual_seed(derive_seed(cfg.seed, stage, "noise", wc.rank))

    def step(engine, micro, _step):
        tokens, mask = window_tokens(micro, vocab, wc.device)
        return engine(tokens, mask, noise_rng)

    return Stage(f"dlm_{stage}", stage, model, optim, metrics, step, vocab=vocab, generators={"noise": noise_rng},
                 lr_multiplier=lr_multiplier, state={"vae_checkpoint": vae_checkpoint})


def _train(config: dict, cfg, wc, stage: str, model: torch.nn.Module, optim, metrics,
           lr_multiplier=None) -> None:
    vocab = load_vocab(config.get("vocab"), wc.device)
    train_stage(config, cfg, wc, build_dlm_stage(cfg, wc, stage, model, optim, metrics, vocab, lr_multiplier,
                                                 config.get("vae_checkpoint")))


def dlm_vae_loop(config: dict) -> None:
    """Ray Train function: Text VAE pretraining."""
    cfg = _experiment(config)
    wc = worker_context(cfg.resources)
    seed_everything(derive_seed(cfg.seed, "vae", "torch"))
    _train(config, cfg, wc, "vae", DLMTextVAE(cfg.dlm.vae), cfg.train_vae.optim, VAE_METRICS)


class _JointStep(torch.nn.Module):
    """What the engine wraps in the joint stage: the model plus a frozen reference encoder (not trained, not saved)."""

    def __init__(self, model: ColaDLM, reference: DLMTextVAE | None):
        super().__init__()
        self.model = model
        self._reference = [reference]  # a list keeps it out of the module tree (parameters, state_dict)

    def forward(self, tokens, mask, generator):
        return self.model.joint_loss(tokens, mask, self._reference[0], generator)


def interval_multiplier(ratio: float, k: int):
    """The interval strategy's VAE learning-rate factor by optimiser step (0-based): ``ratio`` for k steps, 0
    (frozen: AdamW then leaves the weights exactly as they are) for the next k, and so on. The frozen phase keeps
    computing the VAE's gradients, so every engine (DDP, ZeRO) sees the same trainable set at every step."""
    return lambda step: ratio if (step // k) % 2 == 0 else 0.0


def vae_lr_multiplier(dlm):
    """The VAE parameters' learning-rate factor (a number, or a function of the step) for ``dlm.vae_strategy``."""
    if dlm.vae_strategy == "interval":
        return interval_multiplier(dlm.vae_lr_ratio, dlm.interval_steps)
    return dlm.vae_lr_ratio if dlm.vae_strategy == "joint" else 1.0


def joint_module(cfg, wc, pretrained_vae: Callable[[Any], DLMTextVAE]) -> tuple[torch.nn.Module, Callable]:
    """(what the joint stage's engine wraps, its learning-rate multiplier) under ``dlm.vae_strategy``, the model
    freshly initialised from the global torch generator; ``pretrained_vae(device)`` builds the VAE stage's VAE
    (not called for ``scratch``)."""
    model = ColaDLM(cfg.dlm)
    strategy, reference = cfg.dlm.vae_strategy, None
    if strategy != "scratch":
        model.vae = pretrained_vae("cpu")
        if strategy == "frozen" or cfg.dlm.vae_lr_ratio == 0:
            model.vae.requires_grad_(False)
        elif cfg.dlm.ref_weight > 0:
            reference = pretrained_vae(wc.device).eval().requires_grad_(False)
    vae_ids = {id(p) for p in model.vae.parameters()}
    vae_factor = vae_lr_multiplier(cfg.dlm)
    return _JointStep(model, reference), lambda p: vae_factor if id(p) in vae_ids else 1.0


def dlm_joint_loop(config: dict) -> None:
    """Ray Train function: joint VAE + block-causal DiT (``config["vae_checkpoint"]`` unless scratch)."""
    cfg = _experiment(config)
    wc = worker_context(cfg.resources)
    seed_everything(derive_seed(cfg.seed, "joint", "torch"))

    def pretrained(device) -> DLMTextVAE:
        return load_pretrained_vae(cfg, config["vae_checkpoint"], device)

    module, lr_multiplier = joint_module(cfg, wc, pretrained)
    _train(config, cfg, wc, "joint", module, cfg.train_joint.optim, JOINT_METRICS, lr_multiplier=lr_multiplier)
