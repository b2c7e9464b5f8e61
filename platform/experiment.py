"""The TextLDM experiment config: data, models, both training stages, evaluation, resources.

``build_config(preset, overrides)`` is the single entry point: preset dict <- config file <- CLI
overrides, validated strictly (unknown key, bad value) before anything runs.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from latentlm.models.config import check_fields, require, require_fraction, require_positive
from latentlm.models.dit import TextDiTConfig
from latentlm.models.flow import TimestepSchedule
from latentlm.models.repa import REPAConfig
from latentlm.models.text_vae import TextVAEConfig

from .config import from_dict, merge
from .presets import PRESETS, preset_overrides
from .protocol import ContinuationEvalConfig


@dataclass
class DataConfig:
    corpus: str = "embedded:wiki"          # embedded:wiki | local file/folder | hf:<dataset>
    text_field: str = "text"
    tokenizer: str = "embedded:smollm2"    # local dir, hub name or embedded asset (shared with the REPA teacher)
    seq_len: int = 64                      # tokens per training window (TextLDM: 1024)
    layout: Literal["packed", "per_document"] = "packed"                 # packed: documents concatenated with EOS, cut into full windows
                                           # (no padding) | per_document: a window per document, padded
    max_documents: int | None = None       # cap on corpus documents read (None: all)
    valid_fraction: float = 0.05
    test_fraction: float = 0.05
    split_seed: int = 0
    max_train_windows: int | None = None   # cap on tokenized training windows (None: all)
    vocab_limit: int | None = None         # VAE vocab: the K most used ids (+ EOS/pad if rarer) + 1 unknown; null = full
    teacher_windows: int = 1024            # windows with precomputed teacher features (the REPA VAE trains on these)
    teacher_batch_size: int = 16
    teacher_dtype: Literal["auto", "float32", "bfloat16"] = "auto"            # the frozen teacher's compute dtype for stored features (stored as fp16
                                           # either way): auto = bf16 where the hardware has it (GPU, AMX/AVX512-BF16
                                           # CPU: 2.5x faster), float32 elsewhere (emulated bf16 is ~8x slower)
    materialize_max_mb: int = 256          # smaller training sets are held in Ray's object store, larger ones
                                           # are streamed from Parquet every epoch

    def __post_init__(self):
        require_positive("data", seq_len=self.seq_len, teacher_windows=self.teacher_windows,
                         teacher_batch_size=self.teacher_batch_size)
        require(self.seq_len >= 8, "data.seq_len", "at least 8 tokens", self.seq_len)
        check_fields(self, "data")
        require_fraction("data", valid_fraction=self.valid_fraction, test_fraction=self.test_fraction)
        require(self.valid_fraction + self.test_fraction < 1, "data.test_fraction",
                "valid_fraction + test_fraction < 1", self.valid_fraction + self.test_fraction)
        for name in ("max_documents", "max_train_windows", "vocab_limit"):
            value = getattr(self, name)
            require(value is None or value > 0, f"data.{name}", "a positive count or null", value)


@dataclass
class OptimConfig:
    steps: int = 300
    batch_size: int = 32                   # global batch (split over workers)
    lr: float = 3e-4
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.95)
    warmup_steps: int = 20
    min_lr_ratio: float = 0.1              # cosine decay to lr * min_lr_ratio
    grad_clip: float = 1.0
    log_every: int = 25
    checkpoint_every: int = 0              # 0: only the final checkpoint
    ema_decay: float = 0.0                 # 0 disables EMA; DiT reference: 0.9999

    def __post_init__(self):
        require_positive("optim", steps=self.steps, batch_size=self.batch_size, lr=self.lr,
                         log_every=self.log_every)
        require(0 <= self.warmup_steps <= self.steps, "optim.warmup_steps", f"in [0, steps={self.steps}]",
                self.warmup_steps)
        require(0 <= self.ema_decay < 1, "optim.ema_decay", "in [0, 1)", self.ema_decay)
        require(self.checkpoint_every >= 0, "optim.checkpoint_every", ">= 0", self.checkpoint_every)


@dataclass
class VAETrainConfig:
    optim: OptimConfig = field(default_factory=OptimConfig)
    random_truncation: float = 0.5         # P(a batch is randomly cropped) -- TextLDM trains on varied lengths
    min_truncation_len: int = 8

    def __post_init__(self):
        require_fraction("train_vae", random_truncation=self.random_truncation)
        # the VAE is exported and read as trained (vae.safetensors): an EMA of it would be computed and never used
        require(self.optim.ema_decay == 0, "train_vae.optim.ema_decay", "0 (the VAE stage keeps no EMA)",
                self.optim.ema_decay)
        require_positive("train_vae", min_truncation_len=self.min_truncation_len)


@dataclass
class DiTTrainConfig:
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(steps=600, lr=5e-4, ema_decay=0.999))
    schedule: TimestepSchedule = field(default_factory=TimestepSchedule)
    context_fraction: tuple[float, float] = (0.2, 0.8)   # training split point range, as a fraction of seq_len
    normalizer_windows: int = 256                        # windows used to measure latent mean/std

    def __post_init__(self):
        lo, hi = self.context_fraction
        require(0 <= lo <= hi < 1, "train_dit.context_fraction", "0 <= low <= high < 1", self.context_fraction)
        require_positive("train_dit", normalizer_windows=self.normalizer_windows)


EvalConfig = ContinuationEvalConfig  # the continuation protocol's fields (see protocol.py)


@dataclass
class ResourcesConfig:
    num_workers: int = 0                    # 0: one per GPU in the cluster when GPUs are used, else 1
    use_gpu: bool | Literal["auto", "true", "false"] = "auto"
    cpus_per_worker: float = 1.0
    torch_threads: int = 0                  # 0: every core of the node (CPU training)

    def __post_init__(self):
        if isinstance(self.use_gpu, bool):  # YAML/CLI "true" arrives as a bool
            self.use_gpu = "true" if self.use_gpu else "false"
        require_positive("resources", cpus_per_worker=self.cpus_per_worker)
        require(self.num_workers >= 0, "resources.num_workers", ">= 0 (0 = automatic)", self.num_workers)
        check_fields(self, "resources")


@dataclass
class DeepSpeedConfig:
    """DeepSpeed ZeRO for the training stages. Gradient accumulation is derived:
    optim.batch_size = micro_batch_size * accumulation * world_size."""

    enabled: bool = True
    zero_stage: Literal[0, 1, 2, 3] = 1
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 on GPU, fp32 on CPU | fp32 | bf16 (fp16 is unsupported on CPU)
    micro_batch_size: int = 0        # per worker; 0: optim.batch_size / world_size (no accumulation)
    offload_optimizer: bool = False  # ZeRO-Offload of optimizer states to CPU (stage >= 1)
    offload_param: bool = False      # parameter offload to CPU (stage 3 only)

    def __post_init__(self):
        check_fields(self, "deepspeed")
        require(self.micro_batch_size >= 0, "deepspeed.micro_batch_size", ">= 0 (0 = automatic)",
                self.micro_batch_size)
        require(not self.offload_param or self.zero_stage == 3, "deepspeed.offload_param", "zero_stage 3",
                self.zero_stage)


@dataclass
class TextLDMConfig:
    name: str = "textldm"
    preset: str = "tiny"
    run_dir: str = "runs"
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    vae: TextVAEConfig = field(default_factory=TextVAEConfig)
    dit: TextDiTConfig = field(default_factory=TextDiTConfig)
    train_vae: VAETrainConfig = field(default_factory=VAETrainConfig)
    train_dit: DiTTrainConfig = field(default_factory=DiTTrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)
    wandb: bool = True                      # offline unless WANDB_API_KEY / WANDB_MODE say otherwise

    def __post_init__(self):
        require(self.preset in PRESETS, "preset", f"one of {sorted(PRESETS)}", self.preset)
        self.eval.check_window(self.data.seq_len)
        # The DiT works in the VAE's latent space over the same windows.
        require(self.dit.latent_dim == self.vae.latent_dim, "dit.latent_dim",
                f"vae.latent_dim ({self.vae.latent_dim})", self.dit.latent_dim)
        for owner, value in (("vae.max_seq_len", self.vae.max_seq_len), ("dit.max_seq_len", self.dit.max_seq_len)):
            require(value >= self.data.seq_len, owner, f">= data.seq_len ({self.data.seq_len})", value)

    def teacher_request(self) -> tuple[str, int]:
        """(model, layer) whose hidden states the data stage precomputes: REPA's alignment target."""
        return self.vae.repa.teacher, self.vae.repa.layer


def build_config(preset: str = "tiny", overrides: dict[str, Any] | None = None) -> TextLDMConfig:
    """Preset values, then ``overrides`` (nested dict), validated into a TextLDMConfig.

    ``dit.latent_dim`` follows ``vae.latent_dim`` and the model ``max_seq_len`` follow ``data.seq_len``
    unless set explicitly."""
    data = merge(preset_overrides(preset), overrides or {})
    data["preset"] = preset
    vae, dit, d = data.setdefault("vae", {}), data.setdefault("dit", {}), data.get("data", {})
    if "latent_dim" in vae:
        dit.setdefault("latent_dim", vae["latent_dim"])
    if "seq_len" in d:
        vae.setdefault("max_seq_len", d["seq_len"])
        dit.setdefault("max_seq_len", d["seq_len"])
    return from_dict(TextLDMConfig, data)


def textldm_teacher_layers(configs: list[TextLDMConfig]) -> list[int]:
    """Every teacher layer REPA reads across ``configs``: one teacher pass stores them all."""
    return sorted({c.vae.repa.layer for c in configs if c.vae.repa.enabled})


def textldm_effective(config: dict[str, Any]) -> dict[str, Any]:
    """REPA off: its other fields cannot act, so they are reset to the defaults."""
    repa = config.get("vae", {}).get("repa")
    if repa is not None and not repa.get("enabled", True):
        config["vae"]["repa"] = {**dataclasses.asdict(REPAConfig()), "enabled": False}
    return config
