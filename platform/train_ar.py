"""The autoregressive baseline's training stage as a Ray Train function: next-token cross-entropy on the
same token windows as the diffusion methods, through the shared window loop (``token_loop``: DeepSpeed /
torch engine, EMA, safetensors checkpoints, exact resume)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from latentlm.models.gpt import GPT, next_token_loss

from .config import from_dict
from .token_loop import train_windows
from .training import seed_everything

METRICS = ("loss", "accuracy")


@dataclass
class NextTokenOutput:
    loss: torch.Tensor
    accuracy: torch.Tensor


class NextTokenStep(torch.nn.Module):
    """What the engine wraps: the GPT and its loss in one forward (DeepSpeed calls ``forward``). Weights are
    saved under ``model.`` like Cola DLM's stage 2."""

    def __init__(self, model: GPT):
        super().__init__()
        self.model = model

    def forward(self, tokens, mask, generator=None) -> NextTokenOutput:
        return NextTokenOutput(*next_token_loss(self.model(tokens), tokens, mask))


def ar_train_loop(config: dict) -> None:
    """Ray Train function. ``config``: experiment (ARExperimentConfig dict), run_dir, run_name, trial, vocab,
    and the test-only ``inject_fault`` (see ``training.inject_fault``)."""
    from .ar_config import ARExperimentConfig
    cfg = from_dict(ARExperimentConfig, config["experiment"])
    seed_everything(cfg.seed + 31)
    train_windows(config, cfg, label="ar", engine_name="gpt", model=NextTokenStep(GPT(cfg.gpt)),
                  optim=cfg.train.optim, step_loss=lambda engine, tokens, mask, rng: engine(tokens, mask),
                  metrics_names=METRICS, seed_offset=2)
