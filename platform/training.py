"""Pieces every Ray Train loop shares: worker setup, optimizer + schedule, EMA, batch streaming,
throughput, checkpoint write/restore. Plain PyTorch plus ``ray.train`` context calls; no model logic.
"""
from __future__ import annotations

import logging
import math
import os
import random
import tempfile
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from latentlm.models.checkpoint import load_tensors, read_json, save_tensors, write_json


@dataclass
class WorkerContext:
    rank: int
    world_size: int
    device: torch.device
    amp_dtype: torch.dtype | None  # bf16 autocast on GPU, none on CPU

    def autocast(self):
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def worker_context(resources) -> WorkerContext:
    import ray.train
    import ray.train.torch
    ctx = ray.train.get_context()
    device = ray.train.torch.get_device() if torch.cuda.is_available() else torch.device("cpu")
    if device.type == "cpu":
        # Ray pins OMP threads to the worker's CPU reservation; small reservations (which keep Ray Data
        # from starving) would otherwise leave cores idle.
        torch.set_num_threads(resources.torch_threads or max(1, (os.cpu_count() or 1) // ctx.get_world_size()))
    amp = torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else None
    return WorkerContext(ctx.get_world_rank(), ctx.get_world_size(), device, amp)


def load_vocab(path: str | None, device):
    """The run's CompactVocab (``data.vocab_limit``) or None when the model uses the full vocabulary."""
    if path is None:
        return None
    from latentlm.models.vocab import CompactVocab
    return CompactVocab.from_tensors(load_tensors(Path(path))).to(device)


def model_ids(tokens: torch.Tensor, vocab) -> torch.Tensor:
    return tokens if vocab is None else vocab.encode(tokens)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def make_optimizer(params, optim) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    decay, no_decay = [], []
    for p in params:
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": optim.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=optim.lr, betas=tuple(optim.betas))

    def lr_factor(step: int) -> float:  # linear warmup, cosine decay to min_lr_ratio
        if step < optim.warmup_steps:
            return (step + 1) / max(1, optim.warmup_steps)
        progress = (step - optim.warmup_steps) / max(1, optim.steps - optim.warmup_steps)
        return optim.min_lr_ratio + (1 - optim.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)


class EMA:
    """Exponential moving average of parameters (DiT reference: initialised from the model)."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.shadow = {k: v.detach().clone().float() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        for k, v in model.state_dict().items():
            if v.dtype.is_floating_point:
                self.shadow[k].lerp_(v.float(), 1 - self.decay)
            else:
                self.shadow[k].copy_(v)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.shadow


def stream_batches(shard, batch_size: int, seed: int, start_epoch: int = 0, skip: int = 0) -> Iterator[tuple[int, int, dict]]:
    """Endless (epoch, index, numpy batch) stream over a Ray Data shard, reshuffled locally every epoch.

    ``skip`` batches of ``start_epoch`` are dropped: this restores the data position after a resume."""
    epoch = start_epoch
    while True:
        for index, batch in enumerate(shard.iter_batches(batch_size=batch_size, batch_format="numpy",
                                                         drop_last=True, local_shuffle_buffer_size=4 * batch_size,
                                                         local_shuffle_seed=seed + epoch)):
            if epoch == start_epoch and index < skip:
                continue
            yield epoch, index, batch
        epoch += 1


def stack_column(batch: dict, name: str, dtype=np.int64) -> np.ndarray:
    column = batch[name]
    return (np.stack(column) if column.dtype == object else column).astype(dtype)


class Throughput:
    def __init__(self):
        self.t0, self.tokens = time.perf_counter(), 0

    def add(self, tokens: int) -> None:
        self.tokens += tokens

    def rate(self) -> float:
        now = time.perf_counter()
        rate = self.tokens / max(now - self.t0, 1e-9)
        self.t0, self.tokens = now, 0
        return rate


# -- checkpoints -----------------------------------------------------------------------------------

def optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimizer state_dict into flat tensors (safetensors) and JSON-able rest (no pickle)."""
    state = opt.state_dict()
    tensors, scalars = {}, {}
    for pid, entry in state["state"].items():
        for key, value in entry.items():
            if torch.is_tensor(value):
                tensors[f"{pid}.{key}"] = value
            else:
                scalars[f"{pid}.{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def load_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = value
    for name, value in meta["scalars"].items():
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = value
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def write_training_checkpoint(directory: Path, *, config: dict, modules: dict[str, dict[str, torch.Tensor]],
                              optimizer: torch.optim.Optimizer | None, scheduler, state: dict[str, Any]) -> None:
    directory = Path(directory)
    write_json(directory / "config.json", config)
    for name, tensors in modules.items():
        save_tensors(directory / f"{name}.safetensors", tensors)
    if optimizer is not None:
        tensors, meta = optimizer_tensors(optimizer)
        save_tensors(directory / "optimizer.safetensors", tensors)
        write_json(directory / "optimizer.json", {**meta, "scheduler": scheduler.state_dict()})
    write_json(directory / "state.json", state)


def restore_optimizer(directory: Path, optimizer, scheduler) -> None:
    meta = read_json(Path(directory) / "optimizer.json")
    load_optimizer(optimizer, load_tensors(Path(directory) / "optimizer.safetensors"), meta)
    scheduler.load_state_dict(meta["scheduler"])


def report(metrics: dict[str, Any], checkpoint_writer=None) -> None:
    """``ray.train.report`` with an optional checkpoint written by ``checkpoint_writer(dir)`` on rank 0.

    Every worker must call report the same number of times; only rank 0 writes files."""
    import ray.train
    if checkpoint_writer is None:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as tmp:
        if ray.train.get_context().get_world_rank() == 0:
            checkpoint_writer(Path(tmp))
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
        else:
            ray.train.report(metrics)


def should_log(step: int, optim) -> bool:
    return step % optim.log_every == 0 or step == optim.steps


def log_and_checkpoint(stage: str, step: int, optim, metrics: dict[str, Any], wc: WorkerContext, tracker,
                       checkpoint_writer) -> None:
    """Print + track on rank 0, then report to Ray; attach a checkpoint at the final step and every
    ``optim.checkpoint_every`` steps (``checkpoint_writer(dir)`` writes it)."""
    if wc.is_main:  # Ray Train routes worker logging to the driver console (a print would be teed twice)
        logging.getLogger("latentlm.train").info(format_metrics(stage, step, optim.steps, metrics))
    tracker.log({f"{stage}/{k}": v for k, v in metrics.items()}, step)
    due = step == optim.steps or (optim.checkpoint_every and step % optim.checkpoint_every == 0)
    report(metrics, checkpoint_writer if due else None)


def format_metrics(stage: str, step: int, total: int, metrics: dict[str, float]) -> str:
    parts = [f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items()]
    return f"[{stage}] step {step}/{total} | " + " | ".join(parts)

