"""Stage 1: TextVAE training (with or without REPA) as a Ray Train function."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from latentlm.models.checkpoint import load_tensors, read_json
from latentlm.models.text_vae import TextVAE

from .config import from_dict, to_dict
from .tracking import start_tracking
from .training import (Throughput, format_metrics, load_vocab, log_and_checkpoint, make_optimizer,
                       model_ids, restore_optimizer, seed_everything,
                       stack_column, should_log, stream_batches, worker_context,
                       write_training_checkpoint)

log = logging.getLogger(__name__)


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


def checkpoint_modules(vae: TextVAE, vocab) -> dict:
    modules = {"vae": vae.state_dict()}
    if vocab is not None:
        modules["vocab"] = vocab.tensors()
    return modules


def train_vae_loop(config: dict) -> None:
    import ray.train
    import ray.train.torch
    from .experiment import TextLDMConfig
    cfg = from_dict(TextLDMConfig, config["experiment"])
    teacher_dim = config.get("teacher_dim")
    optim = cfg.train_vae.optim
    wc = worker_context(cfg.resources)
    seed_everything(cfg.seed + wc.rank)
    vocab = load_vocab(config.get("vocab"), wc.device)
    vae = TextVAE(cfg.vae, teacher_dim=teacher_dim if cfg.vae.repa.enabled else None).to(wc.device)
    opt, sched = make_optimizer(vae.parameters(), optim)
    start_step, epoch, skip = 0, 0, 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:  # resume after a failure: weights, optimizer, schedule and data position
        with checkpoint.as_directory() as d:
            vae.load_state_dict(load_tensors(Path(d) / "vae.safetensors"))
            restore_optimizer(Path(d), opt, sched)
            state = read_json(Path(d) / "state.json")
            start_step, epoch, skip = state["step"], state["epoch"], state["batch_index"] + 1
    model = ray.train.torch.prepare_model(vae) if wc.world_size > 1 else vae
    per_worker = max(1, optim.batch_size // wc.world_size)
    stream = stream_batches(ray.train.get_dataset_shard("train"), per_worker, cfg.seed, epoch, skip)
    crop_rng = torch.Generator().manual_seed(cfg.seed * 1000 + wc.rank + start_step)
    meter, repa_on = Throughput(), cfg.vae.repa.enabled
    tracker = start_tracking(cfg.wandb, wc.is_main, project="latentlm", group=config["run_name"], name="vae",
                             directory=config["run_dir"], config=to_dict(cfg))
    model.train()
    for step in range(start_step + 1, optim.steps + 1):
        epoch, index, batch = next(stream)
        tokens = torch.from_numpy(stack_column(batch, "tokens"))
        lengths = torch.from_numpy(batch["length"].astype(np.int64))
        teacher = None
        if repa_on:
            flat = stack_column(batch, "teacher", np.float32)
            teacher = torch.from_numpy(flat).view(tokens.shape[0], tokens.shape[1], -1)
        if float(torch.rand((), generator=crop_rng)) < cfg.train_vae.random_truncation:
            tokens, lengths, teacher = random_crop(tokens, lengths, teacher, cfg.train_vae.min_truncation_len, crop_rng)
        tokens = model_ids(tokens.to(wc.device), vocab)
        positions = torch.arange(tokens.shape[1], device=wc.device)
        align_mask = positions[None, :] < lengths.to(wc.device)[:, None]  # REPA only on real tokens
        if teacher is not None:
            teacher = teacher.to(wc.device)
        with wc.autocast():
            out = model(tokens, None, teacher, align_mask)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), optim.grad_clip)
        opt.step()
        sched.step()
        meter.add(tokens.numel() * wc.world_size)
        if should_log(step, optim):
            metrics = {"loss": out.loss.item(), "recon": out.recon.item(), "kl": out.kl.item(),
                       "repa": out.repa.item(), "accuracy": out.accuracy.item(), "grad_norm": float(grad_norm),
                       "lr": sched.get_last_lr()[0], "tokens_per_s": meter.rate(), "step": step, "epoch": epoch}

            def writer(d, step=step, epoch=epoch, index=index):
                write_training_checkpoint(d, config=to_dict(cfg), modules=checkpoint_modules(vae, vocab),
                                          optimizer=opt, scheduler=sched,
                                          state={"stage": "vae", "step": step, "epoch": epoch,
                                                 "batch_index": index, "teacher_dim": teacher_dim})
            log_and_checkpoint("vae", step, optim, metrics, wc, tracker, writer)
    tracker.finish()
