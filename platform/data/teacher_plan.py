"""The pre-flight estimate of a run's frozen-teacher work, printed before anything starts, and the cache budget.

Where the teacher's features come from is ``data.teacher_placement``:

* ``cached``: one teacher pass over the first ``data.teacher_windows`` windows, stored as fp16 Parquet (every
  requested layer) and read back every epoch. Cheap to re-read, but the store grows as windows x seq_len x
  hidden x 2 bytes per layer: 8.4 TB per layer at the TextLDM paper scale, which no lab keeps. A cached plan over
  ``data.max_cache_bytes`` is refused here, naming the streamed placement.
* ``streamed``: a Ray Data pipeline runs the teacher (GPU actors when the cluster has GPUs) on every window the
  trainers read, every epoch; nothing is stored, so the stage trains over the whole training split.
* ``inline``: each trainer runs the teacher on its own micro-batches (no extra actors; the teacher's time is
  part of every step).

The estimate counts the tokens the teacher must process under the placement and divides by a throughput of
2 x params FLOPs per token at an assumed fraction of the local hardware's peak, and of one H100's (a cluster's
driver often has no GPU of its own). A cached pass logs the rate it measured, to compare.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from latentlm.models.config import ConfigError

PLACEMENTS = ("cached", "streamed", "inline")
GPU_UTILISATION = 0.4          # assumed fraction of bf16 peak a batched inference forward pass reaches
CPU_FLOPS_PER_CORE = 2e10      # assumed sustained fp32 FLOP/s per core (AVX2 GEMM, measured 1.5-3e10 on this box)
REFERENCE_GPU_FLOPS = 989e12   # H100 SXM dense bf16 peak: the estimate's second, hardware-independent figure


@dataclass
class TeacherPlan:
    placement: str
    teacher: str
    layers: int                 # layers stored per window (cached) or computed per step (a sweep may add layers)
    hidden_size: int
    params: int
    windows: int | None         # windows read by the feature stages (None: the whole training split)
    seq_len: int
    teacher_tokens: int         # tokens the teacher processes over the whole run
    cache_bytes: int            # bytes the cached placement stores (0 otherwise)
    tokens_per_s: float
    basis: str                  # where tokens_per_s comes from

    @property
    def hours(self) -> float:
        return self.teacher_tokens / max(self.tokens_per_s, 1e-9) / 3600

    @property
    def reference_gpu_hours(self) -> float:
        """The same work on one H100 at the assumed utilisation (a cluster's driver often has no GPU itself)."""
        return self.teacher_tokens * 2 * self.params / (GPU_UTILISATION * REFERENCE_GPU_FLOPS) / 3600

    def summary(self) -> str:
        read = "every training window" if self.windows is None else f"the first {self.windows:,} windows"
        stored = f"stores {human_bytes(self.cache_bytes)}" if self.cache_bytes else "stores nothing"
        return (f"teacher plan ({self.placement}): {self.teacher} ({self.params / 1e6:,.0f}M params, hidden "
                f"{self.hidden_size}, {self.layers} layer(s)) over {read} x {self.seq_len} tokens; {stored}; "
                f"{human_count(self.teacher_tokens)} teacher tokens at {self.tokens_per_s:,.0f} tokens/s "
                f"({self.basis}) = {self.hours:,.2f} h of one teacher actor; on one H100 at "
                f"{GPU_UTILISATION:.0%} of peak: {self.reference_gpu_hours:,.2f} h")


def human_count(n: float) -> str:
    for unit in ("", "K", "M", "B", "T"):
        if n < 1000 or unit == "T":
            return f"{n:,.1f}{unit}" if unit else f"{n:,.0f}"
        n /= 1000
    raise AssertionError


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if n < 1000 or unit == "PB":
            return f"{n:,.1f} {unit}"
        n /= 1000
    raise AssertionError


# Shapes of the paper presets' teachers (from their published config.json files), for an estimate on a machine
# without hub access; a machine with access (or a local copy) reads the real config instead.
PUBLISHED_SHAPES = {
    "Qwen/Qwen3-1.7B": ("Qwen3Config", dict(vocab_size=151936, hidden_size=2048, intermediate_size=6144,
                                            num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8,
                                            head_dim=128, tie_word_embeddings=True)),
    "gpt2": ("GPT2Config", {}),
}


def teacher_config(spec: str, field: str = "teacher"):
    """(the teacher's Hugging Face config, where it came from); ``field`` names the config field in errors."""
    from latentlm.models.teacher import load_teacher_config
    from . import assets
    try:
        return load_teacher_config(assets.resolve_model(spec), field), "config"
    except ConfigError:
        if spec not in PUBLISHED_SHAPES:
            raise
    import transformers
    cls, kwargs = PUBLISHED_SHAPES[spec]
    return getattr(transformers, cls)(**kwargs), "published shape; hub not reachable"


def count_params(teacher_config) -> int:
    """Exact parameter count of a Hugging Face model config, built on the meta device (no weights, no memory)."""
    import torch
    from transformers import AutoModel
    with torch.device("meta"):
        model = AutoModel.from_config(teacher_config)
    return sum(p.numel() for p in model.parameters())


def throughput(params: int) -> tuple[float, str]:
    """Teacher tokens/s assumed from the local hardware, and the assumption in words."""
    import torch
    flops_per_token = 2 * params
    if torch.cuda.is_available():
        from latentlm.platform.training.parts import peak_flops
        peak = peak_flops(torch.device("cuda", 0)) or 989e12
        return (GPU_UTILISATION * peak / flops_per_token,
                f"assumed {GPU_UTILISATION:.0%} of {torch.cuda.get_device_name(0)}'s bf16 peak")
    cores = os.cpu_count() or 1
    return (cores * CPU_FLOPS_PER_CORE / flops_per_token,
            f"assumed {CPU_FLOPS_PER_CORE / 1e9:.0f} GFLOP/s on each of this machine's {cores} CPU cores")


def plan_teacher(cfg, layers: int = 1) -> TeacherPlan | None:
    """The plan for ``cfg`` (None when it reads no teacher). ``layers``: layers stored in one cached pass."""
    # a family registered without a frozen teacher need not define these (registry: one register() call)
    request = cfg.teacher_request() if hasattr(cfg, "teacher_request") else None
    stages = cfg.teacher_stages() if hasattr(cfg, "teacher_stages") else []
    if request is None or not stages:
        return None
    from latentlm.models.teacher import teacher_hidden_size
    config, _ = teacher_config(request[0], cfg.TEACHER_FIELD)
    d = cfg.data
    hidden, params = teacher_hidden_size(config), count_params(config)
    if d.teacher_placement == "cached":
        windows, tokens = d.teacher_windows, d.teacher_windows * d.seq_len
        cache = d.teacher_windows * d.seq_len * hidden * 2 * layers
    else:  # every window a stage trains on passes through the teacher, every epoch
        windows, cache = None, 0
        tokens = sum(optim.steps * optim.batch_size for _, optim in stages) * d.seq_len
    rate, basis = throughput(params)
    return TeacherPlan(d.teacher_placement, request[0], layers, hidden, params, windows, d.seq_len, tokens, cache,
                       rate, basis)


def check_cache_budget(cache_bytes: int, max_cache_bytes: int) -> None:
    """A cached store larger than ``data.max_cache_bytes`` fails before anything is computed."""
    if cache_bytes > max_cache_bytes:
        raise ConfigError(
            f"data.max_cache_bytes: the cached teacher features would take {human_bytes(cache_bytes)} "
            f"(> {human_bytes(max_cache_bytes)}); set data.teacher_placement=streamed to compute them on the fly "
            f"with Ray Data (nothing stored), lower data.teacher_windows, or raise data.max_cache_bytes")


def preflight(cfg, teacher_layers: list[int] | None = None, log=None) -> TeacherPlan | None:
    """Before any run: the plan, logged (``log``: a logger, print when None, nothing when False), and the cache
    budget checked (for every layer one cached pass stores)."""
    request = cfg.teacher_request() if hasattr(cfg, "teacher_request") else None
    plan = plan_teacher(cfg, len({request[1], *(teacher_layers or [])}) if request else 1)
    if plan is not None:
        if log is not False:
            (log.info if log else print)(plan.summary())
        if plan.placement == "cached":
            check_cache_budget(plan.cache_bytes, cfg.data.max_cache_bytes)
    return plan
