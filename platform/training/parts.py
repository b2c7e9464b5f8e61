"""Pieces every Ray Train loop shares: worker setup, optimizer + schedule, EMA, batch streaming,
throughput, checkpoint write/restore (weights, optimizer, RNG, data position). Plain PyTorch plus
``ray.train`` context calls; no model logic. The optimisation step itself lives in ``engine.py``.
"""
from __future__ import annotations

import json
import logging
import math
import os
import random
import tempfile
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from latentlm.models.checkpoint import load_tensors, read_json, save_tensors, write_json


@dataclass
class WorkerContext:
    rank: int
    world_size: int
    device: torch.device

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
    return WorkerContext(ctx.get_world_rank(), ctx.get_world_size(), device)


def load_vocab(path: str | None, device):
    """The run's CompactVocab (``data.vocab_limit``) or None when the model uses the full vocabulary."""
    if path is None:
        return None
    from latentlm.models.vocab import CompactVocab
    return CompactVocab.from_tensors(load_tensors(Path(path))).to(device)


def model_ids(tokens: torch.Tensor, vocab) -> torch.Tensor:
    return tokens if vocab is None else vocab.encode(tokens)


# How derive_seed turns a run's seed into its streams. Stage cache keys name it with the seed: a stage trained under
# another derivation drew other random numbers, so it is not reused.
SEED_SCHEME = "numpy SeedSequence(seed, spawn_key=crc32 of each stream name)"


def derive_seed(seed: int, *stream: str | int) -> int:
    """The seed of one random stream of a run, e.g. ``derive_seed(cfg.seed, "dit", "splits")`` or
    ``(cfg.seed, "vae", "torch", rank)``: a ``numpy.random.SeedSequence`` with the run's seed as entropy and the
    stream's name (strings by CRC-32) as spawn key. Streams of one run are independent, and no stream of one run
    reuses a stream of another run (a second stage seeded at an offset of 17 would replay the first stage of
    the run whose seed is 17 higher)."""
    key = tuple(zlib.crc32(part.encode()) if isinstance(part, str) else int(part) for part in stream)
    return int(np.random.SeedSequence(seed, spawn_key=key).generate_state(1, np.uint64)[0])


def seed_everything(seed: int) -> None:
    """Python's, NumPy's and torch's global generators, for code that draws from them (``torch.randn`` in a model,
    parameter initialisation)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def make_optimizer(params, optim, lr_multiplier=None) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW with weight decay on >= 2-D weights only. ``lr_multiplier(param)`` (default 1) scales a
    parameter's learning rate: a number for the whole schedule (e.g. Cola DLM's VAE at 0.01x the DiT's), or a
    function of the optimiser step (0-based) for a per-step factor (Cola DLM's interval strategy: 0 while the
    VAE is frozen). A factor of 0 leaves a parameter exactly unchanged (AdamW scales its update and its decay by
    the learning rate)."""
    groups: dict[tuple[bool, Any], list] = {}
    for p in params:
        if p.requires_grad:
            scale = 1.0 if lr_multiplier is None else lr_multiplier(p)
            groups.setdefault((p.dim() >= 2, scale if callable(scale) else float(scale)), []).append(p)
    opt = torch.optim.AdamW([{"params": ps, "weight_decay": optim.weight_decay if decay else 0.0,
                              "lr": optim.lr * (1.0 if callable(scale) else scale)}
                             for (decay, scale), ps in groups.items()], lr=optim.lr, betas=tuple(optim.betas))

    def lr_factor(step: int) -> float:  # linear warmup, cosine decay to min_lr_ratio
        if step < optim.warmup_steps:
            return (step + 1) / max(1, optim.warmup_steps)
        progress = (step - optim.warmup_steps) / max(1, optim.steps - optim.warmup_steps)
        return optim.min_lr_ratio + (1 - optim.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    def group_factor(scale):
        return (lambda step: lr_factor(step) * scale(step)) if callable(scale) else lr_factor

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, [group_factor(scale) for _, scale in groups])


class EMA:
    """Exponential moving average of parameters (DiT reference: initialised from the model)."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.shadow = {k: v.detach().clone().float() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        """Under ZeRO-3 call this inside ``engine.gathered()`` (the parameters are sharded otherwise)."""
        for k, v in model.state_dict().items():
            if v.dtype.is_floating_point:
                self.shadow[k].lerp_(v.float(), 1 - self.decay)
            else:
                self.shadow[k].copy_(v)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.shadow


def stream_batches(dataset, batch_size: int, seed: int, start_epoch: int = 0,
                   skip: int = 0) -> Iterator[tuple[int, int, dict]]:
    """Endless (epoch, index, numpy batch) stream of batches, reshuffled locally every epoch.

    What a batch is depends on ``data.ingest`` (``launch.run_stage`` splits the dataset or not):

    * replicated: every worker iterates the whole dataset in the same order and the stream yields *global*
      batches, of which each worker keeps its own rows (``micro_batches``). The batches do not depend on the
      number of workers -- a ZeRO or DDP run sees exactly the batches of a single-process run. The price: each
      worker reads every row (and a streamed teacher runs on every row once per worker).
    * per_rank: the worker's dataset is its own split (Ray Data ``streaming_split``, equal rows per worker,
      assigned in block order: deterministic under ``preserve_order``), and the stream yields its share of
      each global batch (``batch_size`` = global / workers). Each worker reads only its rows.

    Either way the order does not depend on Ray Data's scheduling, and ``(epoch, index)`` is a data position a
    resumed run continues from bit-identically. ``skip`` batches of ``start_epoch`` are dropped: this restores
    the data position after a resume. Each epoch's shuffle is seeded by ``derive_seed(seed, epoch)``."""
    epoch = start_epoch
    while True:
        for index, batch in enumerate(dataset.iter_batches(batch_size=batch_size, batch_format="numpy",
                                                           drop_last=True, local_shuffle_buffer_size=4 * batch_size,
                                                           local_shuffle_seed=derive_seed(seed, epoch))):
            if epoch == start_epoch and index < skip:
                continue
            yield epoch, index, batch
        epoch += 1


def take_rows(batch: dict, start: int, stop: int) -> dict:
    return {name: column[start:stop] for name, column in batch.items()}


def micro_batches(batch: dict, micro_batch_size: int, accumulation: int, wc: WorkerContext) -> Iterator[dict]:
    """This worker's micro-batches of one global batch: micro-batch j of rank r holds rows
    [(j * world + r) * micro, ... + micro); together the workers' micro-batches cover the batch once."""
    for j in range(accumulation):
        start = (j * wc.world_size + wc.rank) * micro_batch_size
        yield take_rows(batch, start, start + micro_batch_size)


def worker_rows(stream: Iterator[tuple[int, int, dict]], wc: WorkerContext) -> Iterator[tuple[int, int, dict]]:
    """A global-batch stream narrowed to this worker's equal share of each batch."""
    for epoch, index, batch in stream:
        share = len(next(iter(batch.values()))) // wc.world_size
        yield epoch, index, take_rows(batch, wc.rank * share, (wc.rank + 1) * share)


@dataclass
class RankFeed:
    """How this worker's rows come out of its dataset shard under ``data.ingest``: the batch size to stream,
    and the worker context that ``micro_batches`` splits each streamed batch with."""
    per_rank: bool
    wc: WorkerContext

    def batch_size(self, global_batch: int) -> int:
        return global_batch // self.wc.world_size if self.per_rank else global_batch

    @property
    def split(self) -> WorkerContext:
        """Per rank, the streamed batch is already this worker's: split it as a single process would."""
        return WorkerContext(0, 1, self.wc.device) if self.per_rank else self.wc

    def rows(self, shard, global_batch: int, seed: int) -> Iterator[tuple[int, int, dict]]:
        """This worker's rows of each global batch (e.g. for a pass before training)."""
        stream = stream_batches(shard, self.batch_size(global_batch), seed)
        return stream if self.per_rank else worker_rows(stream, self.wc)


def rank_feed(cfg, wc: WorkerContext) -> RankFeed:
    return RankFeed(cfg.data.ingest == "per_rank", wc)


def mean_over_workers(values: torch.Tensor, world_size: int) -> list[float]:
    """Average per-worker metrics (e.g. losses of the worker's rows) over workers: the global batch's value."""
    if world_size > 1:
        values = values.clone()
        torch.distributed.all_reduce(values)
        values /= world_size
    return values.tolist()


def window_tokens(batch: dict, vocab, device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A (micro-)batch's (model ids, real-token mask); the mask is None when every window is full (packed
    data), so full windows take the unmasked attention path."""
    tokens = torch.from_numpy(stack_column(batch, "tokens")).to(device)
    lengths = torch.from_numpy(batch["length"].astype(np.int64)).to(device)
    if bool((lengths == tokens.shape[1]).all()):
        return model_ids(tokens, vocab), None
    return model_ids(tokens, vocab), torch.arange(tokens.shape[1], device=device)[None] < lengths[:, None]


def stack_column(batch: dict, name: str, dtype=np.int64) -> np.ndarray:
    column = batch[name]
    return (np.stack(column) if column.dtype == object else column).astype(dtype)


# Dense bf16 tensor-core peak FLOP/s per GPU, matched as a substring of torch.cuda.get_device_name()
# (first match wins, so specific names come first). Other devices: set LATENTLM_PEAK_FLOPS, else no MFU.
PEAK_BF16_FLOPS = (("H100 PCIe", 756e12), ("H100", 989e12), ("H200", 989e12), ("B200", 2250e12),
                   ("A100", 312e12), ("L40S", 362e12), ("L4", 121e12), ("RTX 4090", 165e12))


def peak_flops(device: torch.device) -> float | None:
    """Peak bf16 FLOP/s of one ``device``; None on CPU or an unknown GPU (then MFU is not logged)."""
    if device.type != "cuda":
        return None
    if os.environ.get("LATENTLM_PEAK_FLOPS"):
        return float(os.environ["LATENTLM_PEAK_FLOPS"])
    name = torch.cuda.get_device_name(device)
    peak = next((flops for key, flops in PEAK_BF16_FLOPS if key in name), None)
    if peak is None:
        logging.getLogger("latentlm.train").warning("no peak FLOP/s known for %s: MFU not logged "
                                                    "(set LATENTLM_PEAK_FLOPS)", name)
    return peak


class Throughput:
    """Tokens/s over all workers since the last ``metrics()`` call, the fraction of that time this worker
    waited for its next batch (``data_wait``: the data pipeline, e.g. streamed teacher actors, not keeping up),
    and the model FLOPs utilisation on GPU: 6 * params * tokens/s (forward + backward of a dense model) / the
    workers' summed peak bf16 FLOP/s."""

    def __init__(self, num_params: int, device: torch.device, world_size: int):
        peak = peak_flops(device)
        self.flops_per_token = 6 * num_params
        self.peak = None if peak is None else peak * world_size
        self.t0, self.tokens, self.waited = time.perf_counter(), 0, 0.0

    def add(self, tokens: int) -> None:
        self.tokens += tokens

    def wait(self, seconds: float) -> None:
        self.waited += seconds

    def metrics(self) -> dict[str, float]:
        now = time.perf_counter()
        elapsed = max(now - self.t0, 1e-9)
        rate = self.tokens / elapsed
        out = {"tokens_per_s": rate, "data_wait": self.waited / elapsed}
        self.t0, self.tokens, self.waited = now, 0, 0.0
        if self.peak is not None:
            out["mfu"] = self.flops_per_token * rate / self.peak
        return out


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


def save_optimizer(directory: Path, optimizer: torch.optim.Optimizer, scheduler) -> None:
    tensors, meta = optimizer_tensors(optimizer)
    save_tensors(Path(directory) / "optimizer.safetensors", tensors)
    write_json(Path(directory) / "optimizer.json", {**meta, "scheduler": scheduler.state_dict()})


def write_training_checkpoint(directory: Path, *, config: dict, modules: dict[str, dict[str, torch.Tensor]],
                              optimizer: torch.optim.Optimizer | None, scheduler, state: dict[str, Any]) -> None:
    directory = Path(directory)
    write_json(directory / "config.json", config)
    for name, tensors in modules.items():
        save_tensors(directory / f"{name}.safetensors", tensors)
    if optimizer is not None:
        save_optimizer(directory, optimizer, scheduler)
    write_json(directory / "state.json", state)


def restore_optimizer(directory: Path, optimizer, scheduler) -> None:
    meta = read_json(Path(directory) / "optimizer.json")
    load_optimizer(optimizer, load_tensors(Path(directory) / "optimizer.safetensors"), meta)
    scheduler.load_state_dict(meta["scheduler"])


def rng_state(generators: dict[str, torch.Generator]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Every random stream a loop draws from: python, numpy, torch (CPU and CUDA) and its own generators."""
    tensors = {"torch": torch.get_rng_state(), **{f"generator.{k}": g.get_state() for k, g in generators.items()}}
    if torch.cuda.is_available():
        tensors.update({f"cuda.{i}": state for i, state in enumerate(torch.cuda.get_rng_state_all())})
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    meta = {"python": [version, list(internal), gauss], "numpy": [kind, keys.tolist(), pos, has_gauss, cached]}
    return tensors, meta


def set_rng_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any],
                  generators: dict[str, torch.Generator]) -> None:
    torch.set_rng_state(tensors["torch"])
    for name, generator in generators.items():
        generator.set_state(tensors[f"generator.{name}"])
    cuda = [tensors[k] for k in sorted((k for k in tensors if k.startswith("cuda.")), key=lambda k: int(k[5:]))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    version, internal, gauss = meta["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))


def save_rng(directory: Path, rank: int, generators: dict[str, torch.Generator]) -> None:
    """Each rank draws its own streams (seeded by rank), so each writes its own file."""
    tensors, meta = rng_state(generators)
    save_tensors(Path(directory) / f"rng_rank{rank}.safetensors", tensors)
    write_json(Path(directory) / f"rng_rank{rank}.json", meta)


def restore_rng(directory: Path, rank: int, generators: dict[str, torch.Generator]) -> None:
    set_rng_state(load_tensors(Path(directory) / f"rng_rank{rank}.safetensors"),
                  read_json(Path(directory) / f"rng_rank{rank}.json"), generators)


def resume(engine, generators: dict[str, torch.Generator], wc: WorkerContext,
           restore_extra: Callable[[Path], None] | None = None) -> tuple[int, int, int]:
    """Restore the run from ``ray.train.get_checkpoint()`` (present after a FailureConfig restart or a
    re-run of the same named stage): engine (weights, optimizer, LR schedule), ``restore_extra(dir)``
    (EMA, normalizer, ...), then -- last, so nothing draws from them afterwards -- the RNG streams.
    Returns (step, epoch, batches of that epoch to skip); (0, 0, 0) for a fresh run."""
    import ray.train
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return 0, 0, 0
    with checkpoint.as_directory() as d:
        d = Path(d)
        engine.load(d)
        if restore_extra is not None:
            restore_extra(d)
        restore_rng(d, wc.rank, generators)
        state = read_json(d / "state.json")
    logging.getLogger("latentlm.train").info("rank %d resumed at step %d", wc.rank, state["step"])
    position = data_position(d, wc, state)
    return state["step"], position["epoch"], position["batch_index"] + 1


def data_position(directory: Path, wc: WorkerContext, state: dict) -> dict:
    """This rank's data position in a checkpoint (``data_rank<r>.json``; state.json's for a checkpoint written
    before positions were kept per rank). A per-rank split belongs to its worker count: resuming with another
    count continues from the same batch index of other rows, which the log says."""
    path = Path(directory) / f"data_rank{wc.rank}.json"
    if not path.is_file():
        return {"epoch": state["epoch"], "batch_index": state["batch_index"]}
    position = read_json(path)
    if position["ingest"] == "per_rank" and position["world_size"] != wc.world_size:
        logging.getLogger("latentlm.train").warning(
            "data.ingest per_rank: the checkpoint's %d workers split the data differently from these %d; the data "
            "position is kept, the rows behind it are not", position["world_size"], wc.world_size)
    return position


def write_checkpoint(directory: Path, engine, wc: WorkerContext, generators: dict[str, torch.Generator], *,
                     config: dict, modules: Callable[[], dict[str, dict[str, torch.Tensor]]],
                     state: dict[str, Any]) -> None:
    """Every rank: its engine state (a ZeRO shard) and RNG streams; rank 0 also the consolidated export
    that loads without Ray or DeepSpeed (config.json, state.json, the engine's weights and ``modules()``)."""
    engine.save(directory)
    save_rng(directory, wc.rank, generators)
    write_json(Path(directory) / f"data_rank{wc.rank}.json",
               {"epoch": state["epoch"], "batch_index": state["batch_index"], "ingest": state.get("ingest"),
                "world_size": wc.world_size})
    if wc.is_main:
        write_training_checkpoint(directory, config=config, modules=modules(), optimizer=None, scheduler=None,
                                  state=state)


def report(metrics: dict[str, Any], checkpoint_writer=None) -> None:
    """``ray.train.report`` with an optional checkpoint written by ``checkpoint_writer(dir)`` on every rank.

    Every worker must call report the same number of times. Each rank writes its part into its own temp
    dir and reports it; Ray merges the ranks' dirs into one checkpoint (the name is synced across ranks)."""
    import ray.train
    if checkpoint_writer is None:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint_writer(Path(tmp))
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))


def should_log(step: int, optim) -> bool:
    return step % optim.log_every == 0 or step == optim.steps


def inject_fault(config: dict, step: int, wc: WorkerContext) -> None:
    """Test-only fault injection: ``config["inject_fault"] = {"step": N, "marker": path}`` makes the rank-0
    worker exit hard right after optimizer step N, once (the marker file records that it happened, so
    the restarted run goes through). Exercises FailureConfig restarts + resume from the last checkpoint.
    It travels in the loop config because the workers' environment is fixed when the cluster starts."""
    fault = config.get("inject_fault")
    if fault and wc.is_main and step == fault["step"] and not Path(fault["marker"]).exists():
        Path(fault["marker"]).touch()
        os._exit(1)


def log_and_checkpoint(stage: str, step: int, optim, metrics: dict[str, Any], wc: WorkerContext, tracker,
                       checkpoint_writer, log_path: Path) -> None:
    """Print + track on rank 0 and append to the JSON-lines ``log_path`` (on rank 0's node), then report
    to Ray; attach a checkpoint at the final step and every ``optim.checkpoint_every`` steps
    (``checkpoint_writer(dir)`` writes it, on every rank)."""
    if wc.is_main:  # Ray Train routes worker logging to the driver console (a print would be teed twice)
        logging.getLogger("latentlm.train").info(format_metrics(stage, step, optim.steps, metrics))
        with open(log_path, "a") as f:  # a restarted run logs the steps it redoes again: the last line wins
            f.write(json.dumps(metrics) + "\n")
    tracker.log({f"{stage}/{k}": v for k, v in metrics.items()}, step)
    due = step == optim.steps or (optim.checkpoint_every and step % optim.checkpoint_every == 0)
    report(metrics, checkpoint_writer if due else None)


def format_metrics(stage: str, step: int, total: int, metrics: dict[str, float]) -> str:
    parts = [f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items()]
    return f"[{stage}] step {step}/{total} | " + " | ".join(parts)

