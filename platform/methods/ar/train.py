"""The autoregressive baseline's training stage as a Ray Train function: next-token cross-entropy on the
same token windows as the diffusion methods, through the shared stage loop (``loop``: DeepSpeed /
torch engine, EMA, safetensors checkpoints, exact resume)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from latentlm.models.gpt import GPT, next_token_loss
from latentlm.platform.config import from_dict
from latentlm.platform.training.loop import Stage, train_stage
from latentlm.platform.training.parts import derive_seed, load_vocab, seed_everything, window_tokens, worker_context

METRICS = ("loss", "accuracy")


@dataclass
class NextTokenOutput:
    loss: torch.Tensor
    accuracy: torch.Tensor


class NextTokenStep(torch.nn.Module):
    """What the engine wraps: the GPT and its loss in one forward (DeepSpeed calls ``forward``). Weights are
    saved under ``model.`` like Cola DLM's joint stage."""

    def __init__(self, model: GPT):
        super().__init__()
        self.model = model

    def forward(self, tokens, mask, generator=None) -> NextTokenOutput:
        return NextTokenOutput(*next_token_loss(self.model(tokens), tokens, mask))


def build_ar_stage(cfg, wc, vocab=None) -> Stage:
    """The GPT stage of ``cfg`` (an ARExperimentConfig) on ``wc``'s device, its GPT freshly initialised from the
    global torch generator; micro-batches hold ``tokens`` and ``length``. No Ray: ``ar_train_loop`` runs it under
    Ray Train, experiments/gpu_check.py without."""
    model = NextTokenStep(GPT(cfg.gpt))

    def step(engine, micro, _step):
        return engine(*window_tokens(micro, vocab, wc.device))

    return Stage("ar", "gpt", model, cfg.train_gpt.optim, METRICS, step, vocab=vocab)


def ar_train_loop(config: dict) -> None:
    """Ray Train function. ``config``: experiment (ARExperimentConfig dict), run_dir, run_name, trial, vocab,
    and the test-only ``inject_fault`` (see ``training.parts.inject_fault``)."""
    from .config import ARExperimentConfig
    cfg = from_dict(ARExperimentConfig, config["experiment"])
    wc = worker_context(cfg.resources)
    seed_everything(derive_seed(cfg.seed, "gpt", "torch"))
    vocab = load_vocab(config.get("vocab"), wc.device)  # draws no random numbers: the GPT's init is unchanged
    train_stage(config, cfg, wc, build_ar_stage(cfg, wc, vocab))
