"""The Ray Train loop over token windows shared by Cola DLM's two stages and the autoregressive baseline:
stream global batches, split them into this worker's micro-batches, step the engine, keep an EMA, log,
checkpoint (engine state, RNG streams, data position, EMA and vocabulary) and resume.

The model side is one callable: ``step_loss(engine, tokens, mask, generator)`` returns an object whose
attributes ``metrics_names`` are scalar tensors, ``loss`` among them (the one back-propagated).
"""
from __future__ import annotations

from pathlib import Path

import torch

from latentlm.models.checkpoint import load_tensors

from .config import to_dict
from .engine import build_engine
from .tracking import start_tracking
from .train_vae import vocab_modules
from .training import (EMA, Throughput, inject_fault, load_vocab, log_and_checkpoint, mean_over_workers,
                       micro_batches, resume, should_log, stream_batches, window_tokens, worker_context,
                       write_checkpoint)


def train_windows(config: dict, cfg, *, label: str, engine_name: str, model: torch.nn.Module, optim, step_loss,
                  metrics_names, seed_offset: int = 0, lr_multiplier=None, state: dict | None = None) -> None:
    """Run one training stage. ``config``: the loop config (run_dir, run_name, trial, vocab, ...); ``cfg``: the
    experiment (seed, resources, deepspeed, wandb). ``label`` names the stage in logs, the metrics file
    ``<run_dir>/<label>_metrics.jsonl`` and the checkpoint's ``state.json`` (``stage``); ``engine_name`` names
    the weights file; ``seed_offset`` separates the stages' noise streams; ``state`` adds checkpoint fields."""
    import ray.train
    wc = worker_context(cfg.resources)
    vocab = load_vocab(config.get("vocab"), wc.device)
    model = model.to(wc.device)
    ema = EMA(model, optim.ema_decay) if optim.ema_decay > 0 else None
    engine = build_engine(model, optim, cfg.deepspeed, wc, optim.batch_size, name=engine_name,
                          lr_multiplier=lr_multiplier)
    noise_rng = torch.Generator(wc.device).manual_seed(cfg.seed * 1000 + seed_offset + 10 * wc.rank)
    generators = {"noise": noise_rng}

    def restore_extra(d: Path) -> None:
        if ema is not None:
            ema.shadow = load_tensors(d / "ema.safetensors", wc.device)

    start_step, epoch, skip = resume(engine, generators, wc, restore_extra)
    stream = stream_batches(ray.train.get_dataset_shard("train"), optim.batch_size, cfg.seed, epoch, skip)
    meter = Throughput(engine.num_params, wc.device, wc.world_size)
    tracker = start_tracking(cfg.wandb, wc.is_main, project="latentlm", group=config["run_name"],
                             name=f"{config.get('trial', 'run')}-{label.replace('_', '-')}",
                             directory=config["run_dir"], config=to_dict(cfg))
    engine.module.train()
    for step in range(start_step + 1, optim.steps + 1):
        epoch, index, batch = next(stream)
        sums = torch.zeros(len(metrics_names), device=wc.device)
        for micro in micro_batches(batch, engine.micro_batch_size, engine.accumulation, wc):
            tokens, mask = window_tokens(micro, vocab, wc.device)
            out = step_loss(engine, tokens, mask, noise_rng)
            engine.backward(out.loss)
            engine.step()
            sums += torch.stack([getattr(out, name).detach().float() for name in metrics_names])
            meter.add((tokens.numel() if mask is None else int(mask.sum())) * wc.world_size)
        if ema is not None:
            with engine.gathered():
                ema.update(engine.module)
        inject_fault(config, step, wc)
        if should_log(step, optim):
            means = mean_over_workers(sums / engine.accumulation, wc.world_size)
            metrics = {**dict(zip(metrics_names, means)), "grad_norm": engine.grad_norm, "lr": engine.lr,
                       **meter.metrics(), "step": step, "epoch": epoch}

            def modules():
                exported = vocab_modules(vocab)
                if ema is not None:
                    exported["ema"] = ema.state_dict()
                return exported

            def writer(d, step=step, epoch=epoch, index=index):
                write_checkpoint(d, engine, wc, generators, config=to_dict(cfg), modules=modules,
                                 state={"stage": label, "step": step, "epoch": epoch, "batch_index": index,
                                        **(state or {})})
            log_and_checkpoint(label, step, optim, metrics, wc, tracker, writer,
                               Path(config["run_dir"]) / f"{label}_metrics.jsonl")
    tracker.finish()
