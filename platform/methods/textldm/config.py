"""The TextLDM experiment config: data, models, both training stages, evaluation, resources.

``build_config(preset, overrides)`` is the single entry point: preset dict <- config file <- CLI
overrides, validated strictly (unknown key, bad value) before anything runs.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

from latentlm.models.config import require, require_fraction, require_positive
from latentlm.models.dit import TextDiTConfig
from latentlm.models.flow import TimestepSchedule
from latentlm.models.repa import REPAConfig
from latentlm.models.text_vae import TextVAEConfig
from latentlm.platform.config import from_dict, merge
from latentlm.platform.training.sections import (DataConfig, DeepSpeedConfig, EvalConfig, OptimConfig,
                                                     ResourcesConfig, require_seed)

from .presets import PRESETS, preset_overrides


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
        require_seed(self.seed)
        self.eval.check_window(self.data.seq_len)
        # The DiT works in the VAE's latent space over the same windows.
        require(self.dit.latent_dim == self.vae.latent_dim, "dit.latent_dim",
                f"vae.latent_dim ({self.vae.latent_dim})", self.dit.latent_dim)
        for owner, value in (("vae.max_seq_len", self.vae.max_seq_len), ("dit.max_seq_len", self.dit.max_seq_len)):
            require(value >= self.data.seq_len, owner, f">= data.seq_len ({self.data.seq_len})", value)

    TEACHER_FIELD: ClassVar[str] = "vae.repa.teacher"  # the field naming the frozen teacher, for error messages

    def teacher_request(self) -> tuple[str, int]:
        """(model, layer) whose hidden states the data stage precomputes: REPA's alignment target."""
        return self.vae.repa.teacher, self.vae.repa.layer

    def teacher_stages(self) -> list[tuple[str, OptimConfig]]:
        """The stages that read teacher features, with their optimisers (the token budget the teacher serves)."""
        return [("vae", self.train_vae.optim)] if self.vae.repa.enabled else []


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
    """Fields that cannot act are reset to the defaults: REPA's others when it is off, the projector's hidden width
    when the projector is one Linear."""
    repa = config.get("vae", {}).get("repa")
    if repa is not None and not repa.get("enabled", True):
        config["vae"]["repa"] = {**dataclasses.asdict(REPAConfig()), "enabled": False}
    elif repa is not None and repa.get("projector_depth") == 1:
        repa["projector_hidden"] = REPAConfig.projector_hidden
    return config
