"""The one Ray Train loop every training stage runs: stream global batches, split them into this worker's
micro-batches, step the engine, keep an EMA, log, checkpoint (engine state, RNG streams, data position, EMA,
vocabulary and the stage's own tensors) and resume exactly.

A stage supplies a :class:`Stage`: its model and optimiser section, one function from a micro-batch to the
loss output, and hooks for what only it has (a per-batch draw made for the whole global batch, work after
each optimiser step, extra checkpointed state such as normalisers or timestep samplers, set-up that needs the
data stream).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from latentlm.models.checkpoint import load_tensors
from latentlm.platform import storage
from latentlm.platform.config import to_dict

from .engine import build_engine
from .parts import (EMA, Throughput, WorkerContext, derive_seed, inject_fault, log_and_checkpoint, mean_over_workers,
                    micro_batches, rank_feed, resume, should_log, stream_batches, write_checkpoint)
from .tracking import start_tracking


@dataclass
class Stage:
    """One training stage. ``label`` names it in logs, in ``<run_dir>/<label>_metrics.jsonl`` and in the
    checkpoint's ``state.json``; ``engine_name`` names the weights file and the stage's random streams
    (``parts.derive_seed``). ``step(engine, micro, step)`` runs the forward pass of one micro-batch at optimiser
    step ``step`` (1-based) and returns an object with a scalar tensor attribute per name in ``metrics`` (``loss``
    is back-propagated)."""
    label: str
    engine_name: str
    model: torch.nn.Module
    optim: Any  # OptimConfig
    metrics: tuple[str, ...]
    step: Callable[[Any, dict, int], Any]
    vocab: Any = None                        # CompactVocab or None: checkpointed with the weights
    generators: dict[str, torch.Generator] = field(default_factory=dict)  # checkpointed RNG streams; with
    # data.ingest per_rank a stream that draws for the global batch (prepare_batch) draws for this worker's rows
    # instead, so the loop reseeds it per rank before the first step
    ema: bool = True                         # keep an EMA when optim.ema_decay > 0
    lr_multiplier: Callable | None = None    # parameter -> learning-rate factor
    prepare_batch: Callable[[dict], None] | None = None  # on each streamed batch (the global batch, or per rank
                                                         # this worker's share), before it is split
    after_step: Callable[[], None] | None = None         # after each optimiser step's micro-batches
    on_start: Callable[[Any, int], None] | None = None   # (dataset shard, resumed step) before streaming
    modules: Callable[[], dict] | None = None            # the stage's own checkpointed tensors
    restore: Callable[[Path], None] | None = None        # reads them back on resume
    state: dict = field(default_factory=dict)            # extra state.json fields


def real_tokens(micro: dict) -> int:
    """Real (non-padding) tokens of a micro-batch: each window's ``length``, capped at the window."""
    tokens = micro["tokens"]
    width = len(tokens[0]) if len(tokens) else 0
    return int(sum(min(int(n), width) for n in micro["length"]))


# A streamed teacher that makes the trainers wait for more than this fraction of their time is reported: its
# actors lack the hardware to keep up (issue target: < 5% once they have it).
DATA_WAIT_WARNING = 0.05


def train_stage(config: dict, cfg, wc: WorkerContext, stage: Stage) -> None:
    """Run ``stage`` to ``stage.optim.steps``. ``config``: the loop config (run_dir, run_name, trial, the
    test-only ``inject_fault``, and ``inline_teacher`` when the loop runs the frozen teacher itself); ``cfg``:
    the experiment (seed, data.ingest, deepspeed, wandb)."""
    import ray.train
    from latentlm.platform.data.teacher_feed import inline_teacher
    optim = stage.optim
    feed = rank_feed(cfg, wc)
    if feed.per_rank and wc.world_size > 1:  # each rank's draws cover its own rows: its own streams
        for generator in stage.generators.values():
            generator.manual_seed(derive_seed(generator.initial_seed(), "rank", wc.rank))
    model = stage.model.to(wc.device)
    ema = EMA(model, optim.ema_decay) if stage.ema and optim.ema_decay > 0 else None
    engine = build_engine(model, optim, cfg.deepspeed, wc, optim.batch_size, name=stage.engine_name,
                          lr_multiplier=stage.lr_multiplier)

    def restore_extra(d: Path) -> None:
        if stage.restore is not None:
            stage.restore(d)
        if ema is not None:
            ema.shadow = load_tensors(d / "ema.safetensors", wc.device)

    start_step, epoch, skip = resume(engine, stage.generators, wc, restore_extra)
    teacher = inline_teacher(config, wc.device)
    shard = ray.train.get_dataset_shard("train")
    if stage.on_start is not None:
        stage.on_start(shard, start_step)
    stream = stream_batches(shard, feed.batch_size(optim.batch_size), derive_seed(cfg.seed, stage.engine_name, "data"),
                            epoch, skip)
    meter = Throughput(engine.num_params, wc.device, wc.world_size)
    warned = False
    metrics_file = Path(config["run_dir"]) / f"{stage.label}_metrics.jsonl"
    if wc.is_main:  # a stage resumed on another node appends to the lines its first node published
        storage.fetch(metrics_file)
    tracker = start_tracking(cfg.wandb, wc.is_main, project="latentlm", group=config["run_name"],
                             name=f"{config.get('trial', 'run')}-{stage.label.replace('_', '-')}",
                             directory=config["run_dir"], config=to_dict(cfg))
    engine.module.train()
    for step in range(start_step + 1, optim.steps + 1):
        waiting = time.perf_counter()
        epoch, index, batch = next(stream)
        meter.wait(time.perf_counter() - waiting)
        if stage.prepare_batch is not None:
            stage.prepare_batch(batch)
        sums = torch.zeros(len(stage.metrics), device=wc.device)
        for micro in micro_batches(batch, engine.micro_batch_size, engine.accumulation, feed.split):
            if teacher is not None:
                micro = teacher.add_features(micro)
            out = stage.step(engine, micro, step)
            engine.backward(out.loss)
            engine.step()
            sums += torch.stack([getattr(out, name).detach().float() for name in stage.metrics])
            meter.add(real_tokens(micro) * wc.world_size)
        if stage.after_step is not None:
            stage.after_step()
        if ema is not None:
            with engine.gathered():
                ema.update(engine.module)
        inject_fault(config, step, wc)
        if should_log(step, optim):
            means = mean_over_workers(sums / engine.accumulation, wc.world_size)
            metrics = {**dict(zip(stage.metrics, means)), "grad_norm": engine.grad_norm, "lr": engine.lr,
                       **meter.metrics(), "step": step, "epoch": epoch}
            if (wc.is_main and not warned and step > start_step + optim.log_every
                    and cfg.data.teacher_placement == "streamed" and metrics["data_wait"] > DATA_WAIT_WARNING):
                warned = True  # after the first interval, which includes the pipeline's start-up
                logging.getLogger("latentlm.train").warning(
                    "[%s] %.0f%% of step time waiting for data: the streamed teacher does not keep up; add teacher "
                    "actors (data.teacher_actors, one GPU each on a GPU cluster) or cache the features "
                    "(data.teacher_placement=cached)", stage.label, 100 * metrics["data_wait"])

            def modules():
                exported = {} if stage.vocab is None else {"vocab": stage.vocab.tensors()}
                if stage.modules is not None:
                    exported.update(stage.modules())
                if ema is not None:
                    exported["ema"] = ema.state_dict()
                return exported

            def writer(d, step=step, epoch=epoch, index=index):
                write_checkpoint(d, engine, wc, stage.generators, config=to_dict(cfg), modules=modules,
                                 state={"stage": stage.label, "step": step, "epoch": epoch, "batch_index": index,
                                        "ingest": cfg.data.ingest, **stage.state})
            log_and_checkpoint(stage.label, step, optim, metrics, wc, tracker, writer, metrics_file)
    tracker.finish()
    if wc.is_main:  # the run dir may be on object storage: the metrics (and an offline W&B run) go there too
        for written in (metrics_file, Path(config["run_dir"]) / "wandb"):
            if written.exists():
                storage.publish(written)
