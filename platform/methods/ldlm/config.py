"""The LDLM experiment config: data, frozen token encoder, the joint model and recipe, the joint and
post-training stages, the sampler, unconditional evaluation, resources.

``build_ldlm_config(preset, overrides)`` mirrors TextLDM's ``build_config``: preset <- file <- CLI,
validated strictly before anything runs. Data, optimiser, resources and DeepSpeed sections are the
TextLDM ones, so both method families read the same tokenized shards and teacher features.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from latentlm.models.config import ConfigError, check_fields, rename_keys, require
from latentlm.models.ldlm import LDLMConfig
from latentlm.platform.config import from_dict, merge, to_dict
from latentlm.platform.evaluation.protocol import UnconditionalEvalConfig
from latentlm.platform.training.sections import (DataConfig, DeepSpeedConfig, OptimConfig,
                                                     ResourcesConfig, require_seed)


@dataclass
class TokenEncoderConfig:
    model: str = "embedded:smollm2"   # any HF causal or masked LM (LDLM: GPT-2 small; also BERT-base)
    layer: int = -3                   # hidden_states index, Python-style: -3 = third from last
    stats_windows: int = 512          # windows whose hidden states give the normalisation statistics


@dataclass
class JointTrainConfig:
    # LDLM: AdamW, linear warm-up then constant LR (min_lr_ratio 1 disables the cosine decay), clipping
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(
        steps=1000, batch_size=32, lr=1e-3, warmup_steps=50, min_lr_ratio=1.0, ema_decay=0.999))


@dataclass
class PostDecoderConfig:
    """LDLM App. B.2: a fresh token decoder trained on noisy latents after the joint stage (own stage)."""
    enabled: bool = False
    layers: int = 2
    source: Literal["latents", "hidden"] = "latents"  # latents: B.2; hidden: reads the frozen latent decoder's output
    decoder_noise: float | None = None  # None: the joint stage's ldlm.decoder_noise
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(steps=300, batch_size=32, lr=1e-3))

    def __post_init__(self):
        require(self.layers >= 0, "train_post_decoder.layers", ">= 0", self.layers)
        check_fields(self, "train_post_decoder")
        require(self.decoder_noise is None or self.decoder_noise >= 0, "train_post_decoder.decoder_noise",
                ">= 0 or null", self.decoder_noise)
        # the generator reads post_decoder.safetensors as trained: an EMA of it would be computed and never used
        require(self.optim.ema_decay == 0, "train_post_decoder.optim.ema_decay",
                "0 (the post-decoder stage keeps no EMA)", self.optim.ema_decay)


@dataclass
class LDLMSamplerConfig:
    """LDLM-only inference switches (outside the protocol hash, like Cola DLM's ``sampler``: the matched AR
    baseline shares the eval section). ``auto`` keeps the paper's Euler-Maruyama wherever it is stable (every
    step's factor on z >= 0: from 13 steps on the default log-SNR grid, so the presets' 100 / 256 / 1024 steps
    are unchanged) and uses DDIM below, where Euler-Maruyama oscillates and diverges (factor -0.61 at 8 steps,
    -2.2 at 4). Pin ``ddim`` for one sampler across a step sweep. ``eta`` 0 (deterministic DDIM) by default: on
    a Gaussian toy with the exact denoiser it keeps more of the data variance than eta 1 at every step count
    (std 0.26 / 0.33 vs 0.24 / 0.27 of 0.5 at 4 / 8 steps), as DDIM's few-step results would predict."""
    kind: Literal["auto", "euler_maruyama", "ddim"] = "auto"
    eta: float = 0.0                 # DDIM noise: 1 = ancestral (DDPM posterior, stochastic), 0 = deterministic

    def __post_init__(self):
        check_fields(self, "sampler")
        require(0 <= self.eta <= 1, "sampler.eta", "in [0, 1]", self.eta)


@dataclass
class LDLMExperimentConfig:
    # old config keys still accepted in files and checkpoints (models.config.rename_keys)
    RENAMED_KEYS: ClassVar[dict[str, str]] = {"train": "train_joint", "post_decoder": "train_post_decoder"}
    name: str = "ldlm"
    preset: str = "tiny"
    run_dir: str = "runs"
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    token_encoder: TokenEncoderConfig = field(default_factory=TokenEncoderConfig)
    ldlm: LDLMConfig = field(default_factory=LDLMConfig)
    train_joint: JointTrainConfig = field(default_factory=JointTrainConfig)
    train_post_decoder: PostDecoderConfig = field(default_factory=PostDecoderConfig)
    sampler: LDLMSamplerConfig = field(default_factory=LDLMSamplerConfig)
    eval: UnconditionalEvalConfig = field(default_factory=UnconditionalEvalConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)
    wandb: bool = True

    def __post_init__(self):
        require_seed(self.seed)
        require(self.preset in LDLM_PRESETS, "preset", f"one of {sorted(LDLM_PRESETS)}", self.preset)
        require(self.ldlm.seq_len == self.data.seq_len, "ldlm.seq_len", f"data.seq_len ({self.data.seq_len})",
                self.ldlm.seq_len)
        if self.data.teacher_placement == "cached":  # streamed/inline statistics come from a pass of their own
            require(self.token_encoder.stats_windows <= self.data.teacher_windows, "token_encoder.stats_windows",
                    f"<= data.teacher_windows ({self.data.teacher_windows})", self.token_encoder.stats_windows)
        require(not self.train_post_decoder.enabled or self.train_joint.optim.steps > 0, "train_post_decoder.enabled",
                "a joint stage to post-train after", self.train_post_decoder.enabled)
        if not self.ldlm.train_token_decoder and not self.train_post_decoder.enabled:
            raise ConfigError("train_post_decoder.enabled: ldlm.train_token_decoder is false, so the token decoder "
                              "must be post-trained (set train_post_decoder.enabled: true)")

    @property
    def uses_token_encoder(self) -> bool:
        """False for scratch embeddings: no frozen LM, no teacher features, no statistics."""
        return self.ldlm.encoder_input == "frozen"

    TEACHER_FIELD: ClassVar[str] = "token_encoder.model"  # the field naming the frozen teacher, for error messages

    def teacher_request(self) -> tuple[str, int] | None:
        """(model, layer) whose hidden states the data stage precomputes for this method (None: scratch)."""
        return (self.token_encoder.model, self.token_encoder.layer) if self.uses_token_encoder else None

    def teacher_stages(self) -> list[tuple[str, OptimConfig]]:
        """The stages that read token-encoder features, with their optimisers."""
        if not self.uses_token_encoder:
            return []
        post = [("post_decoder", self.train_post_decoder.optim)] if self.train_post_decoder.enabled else []
        return [("joint", self.train_joint.optim), *post]


_TINY_CODER = {"depth": 2, "hidden_dim": 128, "n_heads": 4}
LDLM_PRESETS: dict[str, dict[str, Any]] = {
    # The embedded offline default: SmolLM2's third-from-last layer, 64-token windows, ~2M-param model.
    "tiny": {
        "data": {"seq_len": 64, "max_train_windows": 6000, "teacher_windows": 1024, "vocab_limit": 16383},
        "ldlm": {"latent_dim": 32, "encoder": _TINY_CODER, "decoder": _TINY_CODER,
                 "token_decoder": {"layers": 1, "hidden_dim": 128, "n_heads": 4},
                 "denoiser": {"hidden_dim": 128, "depth": 4, "n_heads": 4},
                 "warmup_steps": 250, "adaptive_bins": 50, "adaptive_update_every": 10, "decoder_noise": 0.1},
        "train_joint": {"optim": {"steps": 500, "batch_size": 16, "lr": 2e-3, "warmup_steps": 20, "min_lr_ratio": 1.0,
                            "log_every": 50, "ema_decay": 0.995}},
        "eval": {"num_samples": 64, "sampling_seeds": [0, 1], "steps": 100, "interpolation_pairs": 4},
    },
    "small": {
        "data": {"seq_len": 128, "teacher_windows": 100_000, "teacher_batch_size": 32},
        "ldlm": {"latent_dim": 256, "encoder": {"depth": 4, "hidden_dim": 512, "n_heads": 8},
                 "decoder": {"depth": 4, "hidden_dim": 512, "n_heads": 8},
                 "token_decoder": {"layers": 2, "hidden_dim": 512, "n_heads": 8},
                 "denoiser": {"hidden_dim": 512, "depth": 8, "n_heads": 8}, "warmup_steps": 5000,
                 "adaptive_update_every": 100},
        "train_joint": {"optim": {"steps": 100_000, "batch_size": 128, "lr": 3e-4, "warmup_steps": 2000,
                            "min_lr_ratio": 1.0, "log_every": 100, "checkpoint_every": 5000, "ema_decay": 0.9999}},
        "eval": {"num_samples": 500, "sampling_seeds": [0, 1, 2, 3, 4], "steps": 256},
    },
    # LDLM's ablation scale (OWT-128 / LM1B): GPT-2 small as token encoder, 768-d latents, 12-layer DiT,
    # 6-layer Perceivers, 3-layer token decoder, W = 10k, batch 512, 500k iterations.
    "paper": {
        "data": {"corpus": "hf:Skylion007/openwebtext", "tokenizer": "gpt2", "seq_len": 128,
                 "teacher_windows": 5_000_000, "teacher_batch_size": 64, "teacher_placement": "streamed"},
        "token_encoder": {"model": "gpt2", "layer": -3, "stats_windows": 100_000},
        "ldlm": {"latent_dim": 768, "hidden_size": 768, "vocab_size": 50257, "warmup_steps": 10_000},
        "train_joint": {"optim": {"steps": 500_000, "batch_size": 512, "lr": 3e-4, "warmup_steps": 5000,
                            "min_lr_ratio": 1.0, "log_every": 100, "checkpoint_every": 10_000, "ema_decay": 0.9999}},
        "eval": {"num_samples": 1000, "sampling_seeds": [0, 1, 2, 3, 4], "steps": 1024, "genppl_model": "gpt2-large",
                 "mauve_model": "gpt2-large", "mauve_max_length": 1024, "datasets": ["hf:Skylion007/openwebtext"]},
        "resources": {"num_workers": 4, "use_gpu": "true"},
    },
}


def build_ldlm_config(preset: str = "tiny", overrides: dict[str, Any] | None = None) -> LDLMExperimentConfig:
    """Preset values, then ``overrides``; ``ldlm.seq_len`` and ``ldlm.num_latents`` follow ``data.seq_len``
    unless set explicitly."""
    if preset not in LDLM_PRESETS:
        raise ConfigError(f"preset: expected one of {sorted(LDLM_PRESETS)}, got {preset!r}")
    data = merge(copy.deepcopy(LDLM_PRESETS[preset]), rename_keys(LDLMExperimentConfig, overrides))
    data["preset"] = preset
    model = data.setdefault("ldlm", {})
    seq_len = data.get("data", {}).get("seq_len", DataConfig.seq_len)
    model.setdefault("seq_len", seq_len)
    model.setdefault("num_latents", seq_len)
    stats = data.setdefault("token_encoder", {})
    stats.setdefault("stats_windows", min(TokenEncoderConfig.stats_windows,
                                          data.get("data", {}).get("teacher_windows", DataConfig.teacher_windows)))
    return from_dict(LDLMExperimentConfig, data)


def ldlm_teacher_layers(configs: list[LDLMExperimentConfig]) -> list[int]:
    """Every token-encoder layer across ``configs``: one encoder pass stores them all."""
    return sorted({c.token_encoder.layer for c in configs if c.uses_token_encoder})


def ldlm_effective(config: dict[str, Any]) -> dict[str, Any]:
    """Without warm-up its curve's shape cannot act; with uniform timesteps the adaptive sampler's fields
    cannot; with scratch embeddings the token encoder cannot; under Euler-Maruyama the DDIM noise cannot: all
    are reset to the defaults."""
    model, defaults = config.get("ldlm", {}), LDLMConfig()
    if model.get("encoder_input") == "scratch":
        config["token_encoder"] = to_dict(TokenEncoderConfig())
    if config.get("sampler", {}).get("kind") == "euler_maruyama":
        config["sampler"]["eta"] = LDLMSamplerConfig.eta
    if model.get("warmup_steps", 1) == 0:
        model["warmup_midpoint"], model["warmup_steepness"] = defaults.warmup_midpoint, defaults.warmup_steepness
    if model.get("timestep_sampler") == "uniform":
        for name in ("adaptive_bins", "adaptive_ema", "adaptive_update_every", "adaptive_uniform_mix"):
            model[name] = getattr(defaults, name)
    return config
