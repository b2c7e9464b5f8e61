"""The optimisation step of the training loops, the same with or without DeepSpeed.

A loop feeds this worker's micro-batches and calls ``engine(...)``, ``engine.backward(loss)`` and
``engine.step()`` for each; ``step`` updates the weights only at the end of a global batch
(``accumulation`` micro-batches per worker), as DeepSpeed does. Both engines optimise the same way:
``parts.make_optimizer``'s AdamW (decay on >= 2-D weights) and warmup + cosine LR, global-norm
clipping at ``optim.grad_clip``, gradients averaged over the global batch. The models stay plain PyTorch.

    global batch (optim.batch_size) = micro_batch_size * accumulation * world_size
"""
from __future__ import annotations

import logging
import math
from contextlib import nullcontext
from pathlib import Path

import torch

from latentlm.models.checkpoint import load_tensors, save_tensors
from latentlm.models.config import ConfigError

from .parts import WorkerContext, make_optimizer, restore_optimizer, save_optimizer


def batch_plan(global_batch: int, micro_batch_size: int, world_size: int,
               batch_field: str = "optim.batch_size") -> tuple[int, int]:
    """(micro-batch per worker, gradient accumulation steps); ``micro_batch_size`` 0 means global / world."""
    micro = micro_batch_size or global_batch // world_size
    if micro < 1 or global_batch % (micro * world_size):
        given = micro_batch_size or f"0 (automatic: {batch_field} / workers = {micro})"
        raise ConfigError(f"deepspeed.micro_batch_size: {batch_field} = {global_batch} is not a multiple of "
                          f"micro_batch_size {given} x {world_size} workers; pick a micro-batch that divides "
                          f"{global_batch} / {world_size}")
    return micro, global_batch // (micro * world_size)


def check_batch_plans(experiment: dict, world_size: int) -> None:
    """Driver-side fail-fast for an experiment config dict: every training stage's (every section with an
    ``optim``) global batch splits into micro-batches over ``world_size`` workers (before any worker starts)."""
    micro = experiment["deepspeed"]["micro_batch_size"]
    for stage, section in experiment.items():
        if isinstance(section, dict) and isinstance(section.get("optim"), dict):
            batch_plan(section["optim"]["batch_size"], micro, world_size, f"{stage}.optim.batch_size")


def native_bf16(device: torch.device | str) -> bool:
    """Whether ``device`` computes bf16 in hardware: a bf16-capable GPU, or a CPU with AMX or AVX512-BF16 units.
    Elsewhere (e.g. an AVX2-only CPU) bf16 is emulated: a bf16 Linear measured ~8x slower than fp32 on one."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in probes)


def compute_dtype(precision: str, device: torch.device) -> torch.dtype:
    """``auto``: bf16 on a bf16-capable GPU, fp32 otherwise (CPU bf16 works but is slow; fp16 is unsupported)."""
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" and native_bf16(device) else torch.float32
    return torch.bfloat16 if precision == "bf16" else torch.float32


class Engine:
    """What the loops use. ``module`` is the unwrapped model (consolidated weights: ``full_state_dict``)."""

    def __init__(self, module: torch.nn.Module, wc: WorkerContext, micro_batch_size: int, accumulation: int,
                 name: str):
        self.module, self.wc, self.name = module, wc, name
        self.micro_batch_size, self.accumulation = micro_batch_size, accumulation
        self.num_params = sum(p.numel() for p in module.parameters() if p.requires_grad)

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def forward(self, *args, **kwargs):
        raise NotImplementedError

    def gathered(self):
        """Context in which ``module``'s parameters are whole on every rank (ZeRO-3 shards them)."""
        return nullcontext()


class TorchEngine(Engine):
    """Plain PyTorch: DDP (Ray's ``prepare_model``) when distributed, bf16 autocast when asked for,
    no gradient all-reduce until the last micro-batch of a global batch."""

    def __init__(self, model, optim, wc, micro_batch_size, accumulation, dtype, name, lr_multiplier=None):
        super().__init__(model, wc, micro_batch_size, accumulation, name)
        self.optimizer, self.scheduler = make_optimizer(model.parameters(), optim, lr_multiplier)
        self.model = model
        if wc.world_size > 1:  # imported only here: a single process (experiments/gpu_check.py) runs without Ray
            import ray.train.torch
            self.model = ray.train.torch.prepare_model(model)
        self.grad_clip, self.dtype = optim.grad_clip, dtype
        self.micro_steps, self.grad_norm = 0, math.nan

    def forward(self, *args, **kwargs):
        last = (self.micro_steps + 1) % self.accumulation == 0
        sync = nullcontext() if last or self.model is self.module else self.model.no_sync()
        autocast = (torch.autocast(self.wc.device.type, dtype=self.dtype) if self.dtype != torch.float32
                    else nullcontext())
        with sync, autocast:
            return self.model(*args, **kwargs)

    def backward(self, loss: torch.Tensor) -> None:
        (loss / self.accumulation).backward()
        self.micro_steps += 1

    def step(self) -> None:
        if self.micro_steps % self.accumulation:
            return
        max_norm = self.grad_clip if self.grad_clip > 0 else math.inf  # inf: measure, don't clip
        self.grad_norm = float(torch.nn.utils.clip_grad_norm_(self.module.parameters(), max_norm))
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

    @property
    def lr(self) -> float:
        return self.scheduler.get_last_lr()[0]

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        return self.module.state_dict()

    def save(self, directory: Path) -> None:
        """Rank 0: weights ``<name>.safetensors`` (also the export) + optimizer and schedule (safetensors/JSON)."""
        if self.wc.is_main:
            save_tensors(Path(directory) / f"{self.name}.safetensors", self.module.state_dict())
            save_optimizer(directory, self.optimizer, self.scheduler)

    def load(self, directory: Path) -> None:
        self.module.load_state_dict(load_tensors(Path(directory) / f"{self.name}.safetensors", self.wc.device))
        restore_optimizer(directory, self.optimizer, self.scheduler)


def skip_shared_memory_op() -> None:
    """A single CPU worker has no peer to reduce with, but DeepSpeed's CPU backend JIT-compiles its
    shared-memory all-reduce op at initialisation (~50 s on a 2-core box, once per checkout). Marking the op
    incompatible makes DeepSpeed fall back to torch.distributed, which it does anyway when the op is absent."""
    import deepspeed.ops
    compatible = getattr(deepspeed.ops, "__compatible_ops__", None)
    if isinstance(compatible, dict):
        compatible["deepspeed_shm_comm"] = False


class DeepSpeedEngine(Engine):
    """``deepspeed.initialize`` over the process group Ray's TorchTrainer already set up, with our torch
    AdamW and LR schedule (DeepSpeed steps the schedule at each accumulation boundary)."""

    TAG = "state"  # checkpoint subdirectory of <checkpoint>/deepspeed

    def __init__(self, model, optim, ds, wc, micro_batch_size, accumulation, dtype, name, lr_multiplier=None):
        super().__init__(model, wc, micro_batch_size, accumulation, name)
        import deepspeed
        logging.getLogger("DeepSpeed").setLevel(logging.WARNING)  # it logs its whole config at INFO
        if wc.world_size == 1 and wc.device.type == "cpu":
            skip_shared_memory_op()
        self.stage = ds.zero_stage
        optimizer, scheduler = make_optimizer(model.parameters(), optim, lr_multiplier)
        zero = {"stage": ds.zero_stage}
        if ds.offload_optimizer:
            zero["offload_optimizer"] = {"device": "cpu"}
        if ds.offload_param:
            zero["offload_param"] = {"device": "cpu"}
        config = {
            "train_batch_size": micro_batch_size * accumulation * wc.world_size,
            "train_micro_batch_size_per_gpu": micro_batch_size,
            "gradient_accumulation_steps": accumulation,
            "gradient_clipping": optim.grad_clip,
            "zero_optimization": zero,
            "bf16": {"enabled": dtype == torch.bfloat16},
            "zero_force_ds_cpu_optimizer": False,  # keep our torch AdamW when offloading optimizer states
            "steps_per_print": 2**31 - 1,
        }
        self.engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=model.parameters(),
                                                    optimizer=optimizer, lr_scheduler=scheduler, config=config)
        self.module = self.engine.module

    def forward(self, *args, **kwargs):
        return self.engine(*args, **kwargs)

    def backward(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss)  # scales by 1 / accumulation

    def step(self) -> None:
        self.engine.step()  # optimizer + schedule + zero_grad at accumulation boundaries only

    @property
    def grad_norm(self) -> float:
        norm = self.engine.get_global_grad_norm()  # before clipping; None until the first update
        return math.nan if norm is None else float(norm)

    @property
    def lr(self) -> float:
        return self.engine.get_lr()[0]

    def gathered(self):
        if self.stage < 3:
            return nullcontext()
        import deepspeed
        return deepspeed.zero.GatheredParameters(list(self.module.parameters()), modifier_rank=None)

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """The state dict with each parameter's full fp32 master copy (not the bf16 compute copy, not a ZeRO
        shard). Collective: every rank must call it, and gets the full tensors."""
        from deepspeed.utils import safe_get_full_fp32_param
        full: dict[int, torch.Tensor] = {}
        out = {}
        for key, value in self.module.state_dict(keep_vars=True).items():
            if isinstance(value, torch.nn.Parameter):
                if id(value) not in full:  # tied weights appear under two keys; gather once
                    master = safe_get_full_fp32_param(value)  # None: no master copy (ZeRO 0 in fp32)
                    full[id(value)] = (value if master is None else master).detach()
                out[key] = full[id(value)]
            else:
                out[key] = value.detach()
        return out

    def save(self, directory: Path) -> None:
        """Every rank writes its ZeRO shard (DeepSpeed's format) under ``deepspeed/``; rank 0 also writes
        the consolidated fp32 weights ``<name>.safetensors`` that load without DeepSpeed. The shards are
        torch.save files that DeepSpeed unpickles on resume (``weights_only=False``): resume trusted runs only;
        everything a user loads to evaluate or sample is safetensors."""
        self.engine.save_checkpoint(str(Path(directory) / "deepspeed"), tag=self.TAG)
        weights = self.full_state_dict()
        if self.wc.is_main:
            save_tensors(Path(directory) / f"{self.name}.safetensors", weights)

    def load(self, directory: Path) -> None:
        path, _ = self.engine.load_checkpoint(str(Path(directory) / "deepspeed"), tag=self.TAG,
                                              load_optimizer_states=True, load_lr_scheduler_states=True)
        if path is None:
            raise FileNotFoundError(f"no DeepSpeed checkpoint under {directory}/deepspeed/{self.TAG}")


def build_engine(model: torch.nn.Module, optim, ds, wc: WorkerContext, global_batch: int,
                 name: str = "model", lr_multiplier=None) -> Engine:
    """The engine for ``model`` (already on ``wc.device``): DeepSpeed ZeRO when ``ds.enabled``, else plain
    PyTorch. ``name`` names the consolidated weights file of checkpoints (``vae``, ``dit``);
    ``lr_multiplier(param)`` scales parameters' learning rates (``parts.make_optimizer``)."""
    micro, accumulation = batch_plan(global_batch, ds.micro_batch_size, wc.world_size)
    dtype = compute_dtype(ds.precision, wc.device)
    if ds.enabled:
        return DeepSpeedEngine(model, optim, ds, wc, micro, accumulation, dtype, name, lr_multiplier)
    return TorchEngine(model, optim, wc, micro, accumulation, dtype, name, lr_multiplier)
