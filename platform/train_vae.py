"""Stage 1: TextVAE training (with or without REPA) as a Ray Train function."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from latentlm.models.text_vae import TextVAE

from .config import from_dict, to_dict
from .engine import build_engine
from .tracking import start_tracking
from .training import (Throughput, inject_fault, load_vocab, log_and_checkpoint, mean_over_workers, micro_batches,
                       model_ids, resume, seed_everything, should_log, stack_column, stream_batches,
                       worker_context, write_checkpoint)

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


def vocab_modules(vocab) -> dict:
    return {} if vocab is None else {"vocab": vocab.tensors()}


def train_vae_loop(config: dict) -> None:
    """Ray Train function. ``config``: experiment (TextLDMConfig dict), run_dir, run_name, vocab,
    teacher_dim, and the test-only ``inject_fault`` (see ``training.inject_fault``)."""
    import ray.train
    from .experiment import TextLDMConfig
    cfg = from_dict(TextLDMConfig, config["experiment"])
    teacher_dim = config.get("teacher_dim")
    optim = cfg.train_vae.optim
    wc = worker_context(cfg.resources)
    seed_everything(cfg.seed + wc.rank)  # the posterior noise differs per rank, like per sample
    vocab = load_vocab(config.get("vocab"), wc.device)
    vae = TextVAE(cfg.vae, teacher_dim=teacher_dim if cfg.vae.repa.enabled else None).to(wc.device)
    engine = build_engine(vae, optim, cfg.deepspeed, wc, optim.batch_size, name="vae")
    crop_rng = torch.Generator().manual_seed(cfg.seed * 1000)  # the same crops on every rank
    generators = {"crop": crop_rng}
    start_step, epoch, skip = resume(engine, generators, wc)
    stream = stream_batches(ray.train.get_dataset_shard("train"), optim.batch_size, cfg.seed, epoch, skip)
    meter, repa_on = Throughput(engine.num_params, wc.device, wc.world_size), cfg.vae.repa.enabled
    tracker = start_tracking(cfg.wandb, wc.is_main, project="latentlm", group=config["run_name"],
                             name=f"{config.get('trial', 'run')}-vae",
                             directory=config["run_dir"], config=to_dict(cfg))
    engine.module.train()
    for step in range(start_step + 1, optim.steps + 1):
        epoch, index, batch = next(stream)
        sums = torch.zeros(len(METRICS), device=wc.device)
        for micro in micro_batches(batch, engine.micro_batch_size, engine.accumulation, wc):
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
            out = engine(tokens, valid, teacher, valid)
            engine.backward(out.loss)
            engine.step()
            sums += torch.stack([getattr(out, name).detach().float() for name in METRICS])
            meter.add(tokens.numel() * wc.world_size)
        inject_fault(config, step, wc)
        if should_log(step, optim):
            means = mean_over_workers(sums / engine.accumulation, wc.world_size)
            metrics = {**dict(zip(METRICS, means)), "grad_norm": engine.grad_norm, "lr": engine.lr,
                       **meter.metrics(), "step": step, "epoch": epoch}

            def writer(d, step=step, epoch=epoch, index=index):
                write_checkpoint(d, engine, wc, generators, config=to_dict(cfg), modules=lambda: vocab_modules(vocab),
                                 state={"stage": "vae", "step": step, "epoch": epoch, "batch_index": index,
                                        "teacher_dim": teacher_dim})
            log_and_checkpoint("vae", step, optim, metrics, wc, tracker, writer,
                               Path(config["run_dir"]) / "vae_metrics.jsonl")
    tracker.finish()
