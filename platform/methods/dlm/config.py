"""The Cola DLM experiment config: data, the model (Text VAE + block-causal DiT), the VAE stage (VAE
pretraining), the joint stage (VAE + DiT), the continuation evaluation, resources.

``build_dlm_config(preset, overrides)`` mirrors TextLDM's ``build_config``. The evaluation section is
TextLDM's continuation protocol (same fields, same protocol hash), so both methods rank in one table;
``sampler`` holds the Cola DLM-only inference switches.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from latentlm.models.block_dit import check_first_block
from latentlm.models.config import ConfigError, check_fields, rename_keys, require
from latentlm.models.dlm import ColaDLMConfig
from latentlm.platform.config import from_dict, merge
from latentlm.platform.training.sections import (DataConfig, DeepSpeedConfig, EvalConfig, OptimConfig,
                                                     ResourcesConfig, require_seed)


@dataclass
class StageConfig:
    optim: OptimConfig = field(default_factory=OptimConfig)


@dataclass
class DLMSamplerConfig:
    # a prompt that ends inside a block (models/block_dit.py FIRST_BLOCK_MODES): clean (the paper's best and the
    # default), partial_repaint, left_pad or right_pad (EOS padding to a block multiple, at the token level)
    first_block: Literal["clean", "partial_repaint", "left_pad", "right_pad"] = "clean"
    repaint_repeats: int = 1          # partial_repaint: r, repetitions of each guided step (denoise, re-noise)
    repaint_fraction: float = 1.0     # partial_repaint: gamma, the fraction of the steps that repaint (0, 1]
    use_cache: bool = True            # KV cache over committed blocks (False: recompute, for checking)

    def __post_init__(self):
        check_fields(self, "sampler")
        check_first_block(self.first_block, self.repaint_repeats, self.repaint_fraction)


@dataclass
class DLMExperimentConfig:
    # old config keys still accepted in files and checkpoints (models.config.rename_keys)
    RENAMED_KEYS: ClassVar[dict[str, str]] = {"stage1": "train_vae", "stage2": "train_joint"}
    name: str = "dlm"
    preset: str = "tiny"
    run_dir: str = "runs"
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    dlm: ColaDLMConfig = field(default_factory=ColaDLMConfig)
    train_vae: StageConfig = field(default_factory=StageConfig)
    train_joint: StageConfig = field(default_factory=StageConfig)
    sampler: DLMSamplerConfig = field(default_factory=DLMSamplerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)
    wandb: bool = True

    def __post_init__(self):
        require_seed(self.seed)
        require(self.preset in DLM_PRESETS, "preset", f"one of {sorted(DLM_PRESETS)}", self.preset)
        self.eval.check_window(self.data.seq_len)
        require(self.eval.grid == "uniform", "eval.grid", "'uniform' (Cola DLM integrates each block on a "
                "uniform grid)", self.eval.grid)

    def teacher_request(self) -> None:
        return None  # Cola DLM aligns to no external model

    def teacher_stages(self) -> list:
        return []


_TINY_VAE = {"latent_dim": 16, "hidden_dim": 128, "n_heads": 4, "encoder_layers": 2, "decoder_layers": 2,
             "block_size": 16}
DLM_PRESETS: dict[str, dict[str, Any]] = {
    # Embedded offline default: ~3M-param VAE, ~1M-param DiT, 64-token windows, batch 16. The VAE predicts
    # over the 8,191 most used ids + unknown (TextLDM's tiny keeps 16,383): the output head dominates a step
    # on CPU, and this budget lets all seven sweeps (9 joint-stage trainings) run in about an hour on 2 cores.
    "tiny": {
        "data": {"seq_len": 64, "max_train_windows": 6000, "vocab_limit": 8191},
        "dlm": {"vae": _TINY_VAE, "dit": {"latent_dim": 16, "hidden_dim": 128, "depth": 4, "n_heads": 4,
                                          "block_size": 16}},
        "train_vae": {"optim": {"steps": 300, "batch_size": 16, "lr": 2e-3, "log_every": 50}},
        "train_joint": {"optim": {"steps": 400, "batch_size": 16, "lr": 1e-3, "log_every": 50, "ema_decay": 0.995}},
        "eval": {"num_samples": 64, "steps": 16, "cfg_scale": 7.0, "grid": "uniform", "datasets": ["embedded:wiki"],
                 "use_ema": False, "fewshot": {"tasks": ["latentlm_offline"]}},
    },
    "small": {
        "data": {"seq_len": 256},
        "dlm": {"vae": {"latent_dim": 16, "hidden_dim": 512, "n_heads": 8, "encoder_layers": 4,
                        "decoder_layers": 4, "block_size": 16},
                "dit": {"latent_dim": 16, "hidden_dim": 512, "depth": 12, "n_heads": 8, "block_size": 16}},
        "train_vae": {"optim": {"steps": 20000, "batch_size": 64, "lr": 3e-4, "checkpoint_every": 2000}},
        "train_joint": {"optim": {"steps": 50000, "batch_size": 128, "lr": 3e-4, "checkpoint_every": 5000,
                             "ema_decay": 0.9999}},
        "eval": {"num_samples": 1000, "steps": 16, "grid": "uniform", "use_ema": False,
                 "fewshot": {"tasks": ["latentlm_offline"]}},
    },
    # Cola DLM's scaling configuration: 500M VAE (4+4 blocks, width 1536, latent 16), 1.8B DiT
    # (24 x 2048, blocks of 16), OLMo-2 tokenizer, 2048-token sequences.
    "paper": {
        "data": {"corpus": "hf:HuggingFaceFW/fineweb-edu", "tokenizer": "allenai/OLMo-2-1124-7B", "seq_len": 2048},
        "dlm": {"vae": {"vocab_size": 100278, "latent_dim": 16, "hidden_dim": 1536, "n_heads": 12,
                        "encoder_layers": 4, "decoder_layers": 4, "block_size": 16},
                "dit": {"latent_dim": 16, "hidden_dim": 2048, "depth": 24, "n_heads": 16, "block_size": 16},
                "schedule": {"kind": "logit_normal", "loc": -1.0, "scale": 1.0}},
        "train_vae": {"optim": {"steps": 100_000, "batch_size": 256, "lr": 3e-4, "checkpoint_every": 5000}},
        "train_joint": {"optim": {"steps": 500_000, "batch_size": 256, "lr": 3e-4, "checkpoint_every": 10_000,
                             "ema_decay": 0.9999}},
        "eval": {"num_samples": 1000, "steps": 16, "grid": "uniform", "bertscore_model": "roberta-large",
                 "bertscore_num_layers": 17, "mauve_model": "gpt2-large", "mauve_max_length": 1024, "genppl_model": "gpt2-large",
                 "genppl_max_length": 1024, "use_ema": False,
                 "fewshot": {"tasks": ["cola_fewshot"]}},   # the paper's eight tasks (hub datasets)
        "resources": {"num_workers": 8, "use_gpu": "true"},
    },
}


def build_dlm_config(preset: str = "tiny", overrides: dict[str, Any] | None = None) -> DLMExperimentConfig:
    """Preset values, then ``overrides``; ``dlm.dit.latent_dim`` follows ``dlm.vae.latent_dim`` and the DiT's
    block size follows the VAE's unless set explicitly."""
    if preset not in DLM_PRESETS:
        raise ConfigError(f"preset: expected one of {sorted(DLM_PRESETS)}, got {preset!r}")
    overrides = rename_keys(DLMExperimentConfig, overrides)
    data = merge(copy.deepcopy(DLM_PRESETS[preset]), overrides)
    data["preset"] = preset
    model = data.setdefault("dlm", {})
    vae, dit = model.setdefault("vae", {}), model.setdefault("dit", {})
    user_dit = (overrides.get("dlm") or {}).get("dit") or {}
    user_vae = (overrides.get("dlm") or {}).get("vae") or {}
    if "latent_dim" in user_vae and "latent_dim" not in user_dit:
        dit["latent_dim"] = vae["latent_dim"]
    if "block_size" in user_dit and "block_size" not in user_vae:
        vae["block_size"] = dit["block_size"]  # one block size for the prior and a block-causal VAE
    return from_dict(DLMExperimentConfig, data)


def dlm_effective(config: dict[str, Any]) -> dict[str, Any]:
    """Knobs that cannot act reset to their defaults: a frozen or scratch VAE has no learning-rate ratio and no
    reference to apply, only the interval strategy has cycles, only partial repaint has (r, gamma)."""
    model, defaults = config.get("dlm", {}), ColaDLMConfig()
    if model.get("vae_strategy") in ("frozen", "scratch"):
        model["vae_lr_ratio"], model["ref_weight"] = defaults.vae_lr_ratio, defaults.ref_weight
    if model.get("vae_strategy") != "interval" and "interval_steps" in model:
        model["interval_steps"] = defaults.interval_steps
    sampler, sampler_defaults = config.get("sampler", {}), DLMSamplerConfig()
    if sampler.get("first_block") != "partial_repaint":
        for name in ("repaint_repeats", "repaint_fraction"):
            if name in sampler:
                sampler[name] = getattr(sampler_defaults, name)
    return config
