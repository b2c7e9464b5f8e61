"""Cola DLM stages as Ray Train functions.

* ``dlm_stage1_loop``: Text VAE pretraining (reconstruction + KL + masking loss), the measured VAE logSNR
  in every log line.
* ``dlm_stage2_loop``: joint VAE + block-causal DiT. ``dlm.vae_strategy``: ``joint`` starts from the stage-1
  VAE and trains it at ``vae_lr_ratio`` x the DiT's learning rate, regularised towards the frozen stage-1
  encoder; ``frozen`` trains the DiT only; ``scratch`` trains everything from random initialisation.
"""
from __future__ import annotations

from pathlib import Path

import torch

from latentlm.models.checkpoint import load_tensors
from latentlm.models.dlm import ColaDLM
from latentlm.models.dlm_vae import DLMTextVAE

from .config import from_dict
from .token_loop import train_windows
from .training import seed_everything

STAGE1_METRICS = ("loss", "recon", "kl", "mask", "accuracy", "logsnr")
STAGE2_METRICS = ("loss", "fm", "vae", "recon", "kl", "mask", "ref", "accuracy", "logsnr")


def _experiment(config: dict):
    from .dlm_config import DLMExperimentConfig
    return from_dict(DLMExperimentConfig, config["experiment"])


def load_stage1_vae(cfg, checkpoint: str, device) -> DLMTextVAE:
    vae = DLMTextVAE(cfg.dlm.vae)
    vae.load_state_dict(load_tensors(Path(checkpoint) / "vae.safetensors"))
    return vae.to(device)


def _train(config: dict, stage: str, model: torch.nn.Module, optim, step_loss, metrics_names,
           lr_multiplier=None) -> None:
    """Both stages run the shared window loop (``token_loop.train_windows``)."""
    train_windows(config, _experiment(config), label=f"dlm_{stage}", engine_name=stage, model=model, optim=optim,
                  step_loss=step_loss, metrics_names=metrics_names, seed_offset=0 if stage == "vae" else 1,
                  lr_multiplier=lr_multiplier, state={"stage1_checkpoint": config.get("stage1_checkpoint")})


def dlm_stage1_loop(config: dict) -> None:
    """Ray Train function: Text VAE pretraining."""
    cfg = _experiment(config)
    seed_everything(cfg.seed)
    vae = DLMTextVAE(cfg.dlm.vae)
    _train(config, "vae", vae, cfg.stage1.optim, lambda engine, tokens, mask, rng: engine(tokens, mask, rng),
           STAGE1_METRICS)


class _JointStep(torch.nn.Module):
    """What the engine wraps in stage 2: the model plus a frozen reference encoder (not trained, not saved)."""

    def __init__(self, model: ColaDLM, reference: DLMTextVAE | None):
        super().__init__()
        self.model = model
        self._reference = [reference]  # a list keeps it out of the module tree (parameters, state_dict)

    def forward(self, tokens, mask, generator):
        return self.model.joint_loss(tokens, mask, self._reference[0], generator)


def dlm_stage2_loop(config: dict) -> None:
    """Ray Train function: joint VAE + block-causal DiT (``config["stage1_checkpoint"]`` unless scratch)."""
    cfg = _experiment(config)
    seed_everything(cfg.seed + 17)
    model = ColaDLM(cfg.dlm)
    strategy, reference = cfg.dlm.vae_strategy, None
    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    if strategy != "scratch":
        model.vae = load_stage1_vae(cfg, config["stage1_checkpoint"], "cpu")
        if strategy == "frozen" or cfg.dlm.vae_lr_ratio == 0:
            model.vae.requires_grad_(False)
        elif cfg.dlm.ref_weight > 0:
            reference = load_stage1_vae(cfg, config["stage1_checkpoint"], device).eval().requires_grad_(False)
    vae_ids = {id(p) for p in model.vae.parameters()}
    ratio = cfg.dlm.vae_lr_ratio if strategy == "joint" else 1.0
    step_module = _JointStep(model, reference)
    _train(config, "joint", step_module, cfg.stage2.optim,
           lambda engine, tokens, mask, rng: engine(tokens, mask, rng), STAGE2_METRICS,
           lr_multiplier=lambda p: ratio if id(p) in vae_ids else 1.0)
